"""One backoff rule for everything the node retries: jobs, outbox deliveries and webhooks."""

from __future__ import annotations


def backoff(attempt: int, *, base: float, cap: float = float("inf")) -> float:
    """Delay before attempt ``attempt + 1``: ``base``, 2 ``base``, 4 ``base``, ... capped at ``cap``
    (attempt 0 and 1 both wait ``base``)."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))
