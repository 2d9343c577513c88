"""Executors: what runs a stage. The registry maps stage routing keys to them."""
