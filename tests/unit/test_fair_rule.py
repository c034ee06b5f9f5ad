"""The fair grant rule of every lock store (ascob_flows.locks.queueing.plan_round), as a pure
function over holds and waiters on one clock."""

from __future__ import annotations

from ascob_flows.locks.queueing import Hold, Waiter, plan_round


def ids(waiters: list[Waiter]) -> list[int]:
    return [w.run_id for w in waiters]


def test_a_later_run_takes_free_keys_while_the_earlier_waiter_is_blocked_by_an_old_hold() -> None:
    holds = {"a": Hold(run_id=1, order=5)}
    queue = [Waiter(10, 2, ("x", "a")), Waiter(11, 3, ("x",))]
    plan = plan_round(queue, holds)
    assert ids(plan.eligible) == [3]
    assert plan.blockers[2] == [1]  # the holder (x was free when 2's turn came)
    assert 2 not in plan.reserved.get("x", [])


def test_a_waiter_blocked_only_by_newer_holds_reserves_its_keys() -> None:
    holds = {"a": Hold(run_id=3, order=12)}  # granted after run 2 queued (a bypass)
    queue = [Waiter(10, 2, ("a", "b")), Waiter(13, 4, ("b",))]
    plan = plan_round(queue, holds)
    assert ids(plan.eligible) == []
    assert plan.reserved["b"] == [2, 4]  # in arrival order: 2 first
    assert plan.blockers[4] == [2]


def test_arrival_order_among_waiters_that_reserve() -> None:
    queue = [Waiter(1, 1, ("a",)), Waiter(2, 2, ("a",)), Waiter(3, 3, ("b",))]
    plan = plan_round(queue, {})
    assert ids(plan.eligible) == [1, 3]
    assert plan.blockers[2] == [1]


def test_a_run_that_holds_its_keys_already_is_eligible() -> None:
    holds = {"a": Hold(run_id=7, order=1)}
    plan = plan_round([Waiter(2, 7, ("a",))], holds)
    assert ids(plan.eligible) == [7]


def test_sql_clock_since_separates_older_and_newer_holds() -> None:
    """The SQL store's waiters carry ``since`` (the fencing counter at queueing + 1)."""
    holds = {"a": Hold(run_id=1, order=4), "b": Hold(run_id=2, order=9)}
    older = Waiter(order=1, run_id=5, keys=("a", "c"), since=5)  # a's hold (4) is older
    newer = Waiter(order=2, run_id=6, keys=("b", "d"), since=5)  # b's hold (9) is newer
    plan = plan_round([older, newer, Waiter(3, 8, ("c",)), Waiter(4, 9, ("d",))], holds)
    assert ids(plan.eligible) == [8]  # c is free and unreserved; d is reserved for 6
    assert plan.reserved["d"] == [6, 9]
    assert "c" not in plan.reserved or 5 not in plan.reserved["c"]
