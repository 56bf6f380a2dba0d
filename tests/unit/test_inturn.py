"""Hosts asked in turn within a budget (goodsd.inturn)."""

from goodsd.inturn import failed_to_back, within_budget


class SteppingClock:
    """Each reading is ``step`` seconds after the one before."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_hosts_are_given_while_the_budget_lasts():
    # Given hosts each of which takes 1 s to ask, and a budget of 2.5 s
    clock = SteppingClock(1.0)
    # Then the hosts asked before the budget ran out are given, and no more
    assert list(within_budget(["a", "b", "c", "d", "e"], 2.5, clock)) == ["a", "b", "c"]


def test_the_first_host_is_always_given():
    assert list(within_budget(["a", "b"], 0.0, SteppingClock(10.0))) == ["a"]
    assert list(within_budget([], 1.0, SteppingClock(1.0))) == []


def test_every_host_is_given_when_they_answer_quickly():
    hosts = [f"h{i}" for i in range(64)]
    assert list(within_budget(hosts, 2.0, SteppingClock(0.001))) == hosts


def test_hosts_that_failed_go_to_the_back_in_order():
    assert failed_to_back(["a", "b", "c", "d"], ["c", "a"]) == ["b", "d", "a", "c"]
    assert failed_to_back(["a", "b"], []) == ["a", "b"]
    assert failed_to_back(["a", "b"], ["a", "b"]) == ["a", "b"]


def test_successive_lookups_reach_every_host():
    # Given 10 hosts of which only the last answers, and a budget that asks 2 per lookup
    hosts = [f"h{i}" for i in range(10)]
    lookups = 0
    while True:
        lookups += 1
        asked = list(within_budget(hosts, 1.5, SteppingClock(1.0)))
        if "h9" in asked:
            break
        hosts = failed_to_back(hosts, asked)
    # Then the answering host is asked by the fifth lookup: none is asked twice before it
    assert lookups == 5
