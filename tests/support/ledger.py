"""The accounting of a fault case: where every task submitted ended.

A task's fate, most final first:

- **arrived**: a forwarded copy reached the task's expected key (the end of its routing tree);
- **still queued**: a copy is still in one of the pipeline's input queues (handed back);
- **crashed**: a crash notice says why it ended there;
- **lost**: none of these. Every case asserts there is none.

Duplicates (at-least-once delivery) are allowed only as copies carrying the same
deterministic `message_id`. `REPORT` collects one line per case for the terminal summary
(tests/faults/conftest.py) and `.run/faults.txt`.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

REPORT: list[str] = []


@dataclass(frozen=True)
class Arrival:
    task_id: str
    key: str
    message_id: str | None


@dataclass
class Ledger:
    case: str
    expected: dict[str, str]
    """taskId -> the routing key its journey must end at."""
    arrivals: list[Arrival] = field(default_factory=list)
    crashes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    logs: list[dict[str, Any]] = field(default_factory=list)
    queued: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.expected)

    def arrived(self) -> set[str]:
        return {a.task_id for a in self.arrivals if self.expected.get(a.task_id) == a.key}

    def misrouted(self) -> list[Arrival]:
        """Copies at a key their task does not end at (or of a task nobody sent)."""
        return [a for a in self.arrivals if self.expected.get(a.task_id) != a.key]

    def duplicates(self) -> int:
        return len(self.arrivals) - len({a.task_id for a in self.arrivals})

    def conflicting_ids(self) -> dict[str, set[str | None]]:
        """Tasks whose copies do not all carry one and the same non-empty message_id."""
        ids: dict[str, set[str | None]] = defaultdict(set)
        for arrival in self.arrivals:
            ids[arrival.task_id].add(arrival.message_id)
        return {task: found for task, found in ids.items() if len(found) > 1 or None in found}

    def received(self) -> list[dict[str, Any]]:
        return [n for n in self.logs if n.get("event") == "received"]

    def redelivered(self) -> set[str]:
        """Tasks that reached a stage more than once: a `received` notice says so, or there
        are several `received` notices of one stage (after a broker restart RabbitMQ may
        hand back a message it had delivered without setting its redelivered flag)."""
        return {n["taskId"] for n in self.received() if redelivery(n)} | self.received_again()

    def received_again(self) -> set[str]:
        """Tasks with more than one `received` notice of the same stage."""
        seen = Counter((n["taskId"], str(n.get("stage"))) for n in self.received())
        return {task_id for (task_id, _), times in seen.items() if times > 1}

    def unflagged(self) -> set[str]:
        """Tasks received again, yet never with the broker's redelivered flag."""
        flagged = {n["taskId"] for n in self.received() if redelivery(n)}
        return self.received_again() - flagged

    def events(self, event: str, node_id: str | None = None) -> list[dict[str, Any]]:
        return [
            n
            for n in self.logs
            if n.get("event") == event and (node_id is None or n.get("nodeId") == node_id)
        ]

    def fates(self) -> dict[str, str]:
        arrived = self.arrived()
        fate = {}
        for task_id in self.expected:
            if task_id in arrived:
                fate[task_id] = "arrived"
            elif self.queued[task_id]:
                fate[task_id] = "queued"
            elif self.crashes.get(task_id):
                fate[task_id] = "crashed"
            else:
                fate[task_id] = "lost"
        return fate

    def count(self, fate: str) -> int:
        return sum(1 for f in self.fates().values() if f == fate)

    def lost(self) -> list[str]:
        return sorted(t for t, f in self.fates().items() if f == "lost")

    def crash_kinds(self) -> Counter[str]:
        fates = self.fates()
        return Counter(
            notices[-1]["error"]["kind"]
            for task_id, notices in self.crashes.items()
            if fates.get(task_id) == "crashed"
        )

    def overcome(self) -> int:
        """Crash notices of tasks that arrived after all (a later delivery succeeded)."""
        arrived = self.arrived()
        return sum(len(n) for task_id, n in self.crashes.items() if task_id in arrived)

    def line(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.crash_kinds().items()))
        text = (
            f"{self.case:<26} sent {self.sent:4d}  arrived {self.count('arrived'):4d}  "
            f"crashed {self.count('crashed'):4d}  redelivered {len(self.redelivered()):3d}  "
            f"duplicates {self.duplicates():3d}  still queued {self.count('queued'):4d}  "
            f"lost {self.count('lost')}  ({self.seconds:.1f} s)"
        )
        extra = [f"crash kinds: {kinds}"] if kinds else []
        if overcome := self.overcome():
            extra.append(f"{overcome} crash notices of tasks that then arrived")
        extra += self.notes
        return text + ("\n" + " " * 27 + "; ".join(extra) if extra else "")

    def record(self) -> None:
        """Add this case's line to the run's report (before any assertion can fail)."""
        REPORT.append(self.line())

    def check(self) -> None:
        """The promise: nothing lost, nothing at a wrong key, duplicates only as one id."""
        lost = self.lost()
        assert not lost, f"{len(lost)} tasks lost: {lost[:10]}\n{self.line()}"
        misrouted = self.misrouted()
        assert not misrouted, f"copies at unexpected keys: {misrouted[:10]}"
        conflicting = self.conflicting_ids()
        assert not conflicting, f"copies of a task with different message ids: {conflicting}"


def redelivery(received: dict[str, Any]) -> bool:
    """Whether a `received` notice is of a task's second or later delivery."""
    return bool(received.get("redelivered")) or "redelivered" in str(received.get("logMessage"))


def parse(body: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(body)
    return parsed
