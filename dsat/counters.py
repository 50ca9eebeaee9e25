"""Counting what a step rejects or drops, and logging it without flooding.

Bad input is never silent: every rejection is counted by reason (the counts
become DSAT's own metrics) and logged with the fields an operator needs.  A
flood of bad input is counted in full, but only the first ten of each reason
and then every power of two reach the log.
"""

from __future__ import annotations

from collections import Counter

from twisted.logger import Logger


def should_log(count: int) -> bool:
    """True for the 1st..10th, then the 16th, 32nd, 64th... occurrence."""
    return count <= 10 or count & (count - 1) == 0


class Rejections(Counter[str]):
    """Counts rejections by reason and logs a bounded sample of them."""

    log = Logger()

    def __init__(self, owner: str) -> None:
        super().__init__()
        self.owner = owner

    def reject(self, reason: str, error: object, count: int = 1) -> None:
        before = self[reason]
        total = self[reason] = before + count
        # logged when the total passes one of should_log's counts, so a batch of many is never silent
        if before < 10 or total.bit_length() > before.bit_length():
            self.log.warn(
                "{owner}: rejected ({reason}): {error}; {total} so far",
                owner=self.owner,
                reason=reason,
                error=error,
                total=total,
            )
