"""The tracker (SPEC §10): every task's journey stored from the notices, and served over HTTP."""
