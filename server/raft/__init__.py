"""Raft consensus for chordfs metadata: a pure core (core.py and the modules
it uses), durable log storage (storage.py), and drivers elsewhere."""

PURE_CORE = True
