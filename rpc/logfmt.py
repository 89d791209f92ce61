"""Structured log lines: ``event key=value ...`` so asynchronous bugs can be
followed by grepping node, term, connection and request ids across nodes."""

import logging


def kv(event: str, **fields) -> str:
    parts = [event]
    for key, value in fields.items():
        text = str(value)
        if not text or " " in text or "=" in text:
            text = repr(text)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def configure(level: int = logging.INFO, node: str = "") -> None:
    """Process-wide logging for daemons and demos; tests use pytest's capture."""
    prefix = f"node={node} " if node else ""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s %(name)s {prefix}%(message)s",
    )
