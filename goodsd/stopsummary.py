"""The line a stop ends with: what became of the items this master's consumers held.

Counted from what the master has anyway, so it costs no Redis call: each consumer's
scoreboard (items handled, items given back unstarted), read when the stop begins and once
more when the consumer exits, and the master's own requeues of consumers that exited holding
items. Only consumers that had a process when the stop began count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from goodsd.children import Child, Role
from goodsd.scoreboard import Reading


@dataclass
class StopSummary:
    """What a stop did with the items in hand, so far."""

    marks: dict[str, Reading]  # consumer id -> its scoreboard when the stop began
    finished: int = 0  # items whose handler ran to its end (returned or raised) since then
    failed: int = 0  # those of them whose handler raised (they wait for a retry)
    # Items back in the queue instead of run: released unstarted by their consumer, or
    # requeued by the master from a consumer that exited holding them (killed at the graceful
    # timeout or by a second stop; an item that was running then will run again). An item
    # finished while Redis was away, so never recorded, counts in both: it will run again.
    given_back: int = 0

    @classmethod
    def begin(cls, children: Iterable[Child]) -> StopSummary:
        """Mark where each live consumer's counters stand as the stop begins."""
        return cls(
            {
                child.identity: child.board.read()
                for child in children
                if child.role == Role.CONSUMER and child.pid and child.board is not None
            }
        )

    def consumer_exited(self, identity: str, last: Reading) -> None:
        """Count what consumer ``identity`` did since the mark, from its last scoreboard."""
        mark = self.marks.get(identity)
        if mark is None:
            return
        self.finished += last.done + last.failed - mark.done - mark.failed
        self.failed += last.failed - mark.failed
        self.given_back += last.given_back - mark.given_back

    def requeued(self, identity: str, count: int) -> None:
        """The master gave back ``count`` items that consumer ``identity`` held at its exit."""
        if identity in self.marks:
            self.given_back += count

    def line(self, still_held: Iterable[str] = ()) -> str:
        """The summary for the log. ``still_held``: consumer ids whose items the master could
        not give back (Redis away); they stay in flight until a master requeues them."""
        text = (
            f"stopped: {self.finished} item(s) finished during the stop ({self.failed} failed), "
            f"{self.given_back} given back"
        )
        stuck = len(set(still_held) & self.marks.keys())
        if stuck:
            text += f"; what {stuck} consumer(s) held is still in flight (redis unreachable)"
        return text
