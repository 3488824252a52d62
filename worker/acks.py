"""Which acks to send: a pure plan from the delivery tags still unsettled and those to ack.

One `basic.ack(multiple=True)` covers every settled tag below the lowest unsettled one; tags
settled above it are acked one by one, so a single long-running delivery never holds back
the rest of the prefetch window. Only unsettled tags (at most the prefetch count) and the
acks of one loop iteration are kept, however long that delivery runs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AckPlan:
    """`basic.ack(upto, multiple=True)` if `upto` is set, then `basic.ack(tag)` for each single."""

    upto: int | None
    singles: tuple[int, ...]

    @property
    def frames(self) -> int:
        return (1 if self.upto is not None else 0) + len(self.singles)


def plan_acks(unsettled: Collection[int], to_ack: Iterable[int]) -> AckPlan:
    """The acks for `to_ack`, given the tags delivered and not yet settled (acked or nacked).

    A multiple ack up to a tag acks every outstanding delivery at or below it, so it may only
    reach below the lowest unsettled tag; nacked tags are no longer outstanding and are safe
    to cover."""
    tags = sorted(to_ack)
    floor = min(unsettled, default=None)
    cut = (
        len(tags)
        if floor is None
        else next((i for i, t in enumerate(tags) if t > floor), len(tags))
    )
    if cut < 2:
        return AckPlan(None, tuple(tags))
    return AckPlan(tags[cut - 1], tuple(tags[cut:]))


class AckBook:
    """Delivery tags of one channel: delivered, settled, acks not sent yet (I/O thread only)."""

    __slots__ = ("_to_ack", "_unsettled")

    def __init__(self) -> None:
        self._unsettled: set[int] = set()
        self._to_ack: set[int] = set()

    def delivered(self, tag: int) -> None:
        self._unsettled.add(tag)

    def ack(self, tag: int) -> bool:
        """Mark for acking; False if the tag is not outstanding (a second ack would close the
        channel with an unknown-delivery-tag error)."""
        if tag not in self._unsettled:
            return False
        self._unsettled.discard(tag)
        self._to_ack.add(tag)
        return True

    def nack(self, tag: int) -> bool:
        """Settle by a nack (sent at once by the caller); False if not outstanding."""
        if tag not in self._unsettled:
            return False
        self._unsettled.discard(tag)
        return True

    @property
    def due(self) -> bool:
        return bool(self._to_ack)

    @property
    def tracked(self) -> int:
        """Tags held in memory (bounded by the prefetch count plus one iteration's acks)."""
        return len(self._unsettled) + len(self._to_ack)

    def plan(self) -> AckPlan:
        """The acks to send now; they are forgotten here once planned."""
        plan = plan_acks(self._unsettled, self._to_ack)
        self._to_ack.clear()
        return plan

    def clear(self) -> None:
        self._unsettled.clear()
        self._to_ack.clear()
