"""Reload and rollback as bookkeeping (goodsd.reloader): which roles roll, generations, when a
reload has proven itself, and what going back restores; no process, no file."""

from __future__ import annotations

import pytest

from goodsd.children import Child, Role, State
from goodsd.config import parse
from goodsd.reloader import Reloader

BASE = "consumers: {processes: 2, handler: goodsd.handlers:noop}\n"
WITH_PRODUCER = BASE + "producer: {processes: 1, source: goodsd.sources:counter}\n"


def config(text: str = BASE):
    return parse(text, "goodsd.yaml")


def child(role: Role, generation: int, state: State = State.RUNNING, **kw: object) -> Child:
    return Child(role=role, index=0, seq=1, generation=generation, state=state, **kw)


def a_reloader(changed: list[str] | None = None) -> Reloader:
    return Reloader(changed_code=lambda children: list(changed or []) if children else [])


def test_a_changed_setting_rolls_its_role_only() -> None:
    old, new = config(), config(BASE.replace("noop", "fail"))
    rolled = a_reloader().rolls(old, new, [child(Role.CONSUMER, 1)])
    assert rolled == {Role.CONSUMER: "consumer settings changed"}


def test_a_pool_size_alone_rolls_nothing() -> None:
    old, new = config(), config(BASE.replace("processes: 2", "processes: 5"))
    assert a_reloader().rolls(old, new, [child(Role.CONSUMER, 1)]) == {}


def test_code_changed_on_disk_rolls_the_role_whose_current_children_loaded_it() -> None:
    changed = ["/srv/app/a.py", "/srv/app/b.py", "/srv/app/c.py", "/srv/app/d.py"]
    rolled = a_reloader(changed).rolls(config(), config(), [child(Role.CONSUMER, 1)])
    assert rolled == {
        Role.CONSUMER: "consumer code changed on disk (/srv/app/a.py, /srv/app/b.py, "
        "/srv/app/c.py, ...)"
    }


def test_a_reload_gives_rolled_roles_a_new_generation_and_keeps_the_old_config() -> None:
    reloader, old, new = a_reloader(), config(), config(BASE.replace("noop", "fail"))
    reloader.put_in_force(old, new, [Role.CONSUMER], [], ready_sent=True)
    assert reloader.generation == {Role.CONSUMER: 2, Role.PRODUCER: 1}
    assert reloader.previous is old and reloader.pending
    # A second reload before the first proved itself keeps the first one's way back
    newer = config(BASE.replace("noop", "fail").replace("processes: 2", "processes: 3"))
    reloader.put_in_force(new, newer, [Role.CONSUMER], [], ready_sent=True)
    assert reloader.generation[Role.CONSUMER] == 3
    assert reloader.previous is old and reloader.previous_generation[Role.CONSUMER] == 1


def test_only_children_of_an_unproven_reload_can_roll_it_back() -> None:
    reloader = a_reloader()
    new_one, old_one = child(Role.CONSUMER, 2), child(Role.CONSUMER, 1)
    assert not reloader.can_roll_back(new_one)  # no reload yet
    reloader.put_in_force(config(), config(), [Role.CONSUMER], [new_one, old_one], ready_sent=True)
    assert reloader.can_roll_back(new_one) and not reloader.can_roll_back(old_one)
    # Once a new child handled an item the reload is proven: nothing is left to go back to
    assert reloader.note_proofs([new_one, old_one], {new_one: 1})
    assert reloader.previous is None and not reloader.can_roll_back(new_one)


def test_a_reload_with_no_item_handled_yet_is_not_proven() -> None:
    reloader = a_reloader()
    new_one = child(Role.CONSUMER, 2)
    reloader.put_in_force(config(), config(), [Role.CONSUMER], [new_one], ready_sent=True)
    assert not reloader.note_proofs([new_one], {new_one: 0})
    assert reloader.previous is not None


def test_rolling_back_restores_the_config_and_generations_and_says_why() -> None:
    reloader, old, new = a_reloader(), config(), config(BASE.replace("noop", "fail"))
    reloader.put_in_force(old, new, [Role.CONSUMER], [], ready_sent=True)
    assert reloader.roll_back(new, [], "consumer crashed 3 times in a row") is old
    assert reloader.generation == {Role.CONSUMER: 1, Role.PRODUCER: 1}
    assert reloader.previous is None and reloader.error == "consumer crashed 3 times in a row"
    with pytest.raises(ValueError):
        reloader.roll_back(old, [], "again")


def test_a_finished_producer_stays_finished_while_its_source_is_the_same() -> None:
    reloader, old = a_reloader(), config(WITH_PRODUCER)
    done = child(Role.PRODUCER, 1, State.FINISHED)
    new = config(WITH_PRODUCER.replace("processes: 2", "processes: 3"))
    reloader.put_in_force(old, new, [Role.PRODUCER], [done], ready_sent=True)
    assert done.generation == reloader.generation[Role.PRODUCER] == 2
    # A new source is run again: its finished producer stays of the older generation
    other = config(WITH_PRODUCER.replace("goodsd.sources:counter", "mypkg.source:rows"))
    reloader.put_in_force(new, other, [Role.PRODUCER], [done], ready_sent=True)
    assert done.generation == 2 != reloader.generation[Role.PRODUCER]
