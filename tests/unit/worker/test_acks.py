"""The ack plan, checked against a model of the broker's outstanding deliveries."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.acks import AckBook, AckPlan, plan_acks


def apply(outstanding: set[int], plan: AckPlan) -> None:
    """What the broker does with the plan's frames; a tag it does not know is a channel error."""
    if plan.upto is not None:
        covered = {t for t in outstanding if t <= plan.upto}
        assert covered, "a multiple ack that acks nothing"
        outstanding -= covered
    for tag in plan.singles:
        assert tag in outstanding, f"ack of unknown delivery tag {tag}"
        outstanding.discard(tag)


# Each delivery is settled by an ack, by a nack, or not at all (still being worked on).
fates = st.lists(st.sampled_from(["ack", "nack", "open"]), min_size=0, max_size=60)


class TestPlanAcks:
    @given(fates)
    def test_acks_exactly_the_settled(self, fate: list[str]) -> None:
        """After the plan, the broker holds exactly the unsettled deliveries."""
        tags = range(1, len(fate) + 1)
        unsettled = {t for t, f in zip(tags, fate, strict=True) if f == "open"}
        to_ack = {t for t, f in zip(tags, fate, strict=True) if f == "ack"}
        outstanding = unsettled | to_ack  # nacks were sent already
        apply(outstanding, plan_acks(unsettled, to_ack))
        assert outstanding == unsettled

    @given(fates)
    def test_single_multiple_ack_below_the_lowest_unsettled(self, fate: list[str]) -> None:
        """Acks below the lowest unsettled tag take one frame; only those above go singly."""
        tags = range(1, len(fate) + 1)
        unsettled = {t for t, f in zip(tags, fate, strict=True) if f == "open"}
        to_ack = {t for t, f in zip(tags, fate, strict=True) if f == "ack"}
        plan = plan_acks(unsettled, to_ack)
        floor = min(unsettled, default=len(fate) + 1)
        below = [t for t in to_ack if t < floor]
        above = [t for t in to_ack if t > floor]
        assert plan.frames == min(1, len(below)) + len(above)
        assert list(plan.singles) == sorted(plan.singles)
        if plan.upto is not None:
            assert plan.upto < floor
            assert all(t > plan.upto for t in plan.singles)

    def test_nothing_to_ack(self) -> None:
        """No settled tags: no frames."""
        assert plan_acks({3, 4}, []) == AckPlan(None, ())

    def test_one_slow_delivery_does_not_hold_back_the_rest(self) -> None:
        """Tag 1 still running: 2..5 are acked now, one by one."""
        assert plan_acks({1}, {2, 3, 4, 5}) == AckPlan(None, (2, 3, 4, 5))

    def test_run_at_the_front_is_one_frame(self) -> None:
        """Tags 1..4 settled, 5 running, 7 settled: one multiple ack and one single."""
        assert plan_acks({5, 6}, {1, 2, 3, 4, 7}) == AckPlan(4, (7,))


operations = st.lists(
    st.tuples(st.sampled_from(["deliver", "ack", "nack", "flush"]), st.integers(0, 10**6)),
    max_size=300,
)


class TestAckBook:
    @settings(max_examples=200)
    @given(operations)
    def test_book_matches_the_broker_model(self, ops: list[tuple[str, int]]) -> None:
        """Any interleaving of deliveries, settles and flushes keeps book and broker in step."""
        book = AckBook()
        outstanding: set[int] = set()
        next_tag = 1
        for op, pick in ops:
            open_tags = sorted(outstanding)
            if op == "deliver":
                book.delivered(next_tag)
                outstanding.add(next_tag)
                next_tag += 1
            elif op in ("ack", "nack") and open_tags:
                tag = open_tags[pick % len(open_tags)]
                settled = book.ack(tag) if op == "ack" else book.nack(tag)
                if op == "nack" and settled:
                    outstanding.discard(tag)
            elif op == "flush":
                apply(outstanding, book.plan())
        apply(outstanding, book.plan())
        assert book.tracked == len(outstanding)

    def test_second_settle_refused(self) -> None:
        """A tag acked or nacked once cannot be settled again."""
        book = AckBook()
        book.delivered(1)
        book.delivered(2)
        assert book.ack(1) and not book.ack(1) and not book.nack(1)
        assert book.nack(2) and not book.ack(2)
        assert not book.ack(99)

    def test_bounded_behind_one_long_delivery(self) -> None:
        """200k deliveries acked behind one that never finishes: only a few tags are kept."""
        book = AckBook()
        book.delivered(1)
        for tag in range(2, 200_002):
            book.delivered(tag)
            book.ack(tag)
            if tag % 64 == 0:
                book.plan()
        book.plan()
        assert book.tracked == 1
