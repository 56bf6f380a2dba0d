"""The demo's config and handler, without running anything."""

from __future__ import annotations

import os

import pytest

from goodsd import config, handlers
from goodsd.ops import demo


@pytest.mark.parametrize("producers", [0, 1])
def test_demo_config_is_valid(producers):
    data = demo.demo_config("unix:///tmp/x/redis.sock", 4, producers)
    cfg = config.parse(config.dump(data), "demo.yaml")
    assert cfg.consumers.handler == "goodsd.handlers:demo"
    assert (cfg.consumers.retries, cfg.consumers.retry_delay) == (2, 2.0)
    assert cfg.producer.processes == producers


def test_demo_handler_fails_some_items_for_good_and_others_by_chance(monkeypatch):
    # Given a handler without the pause and without bad luck
    monkeypatch.setattr(handlers.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(handlers.random, "random", lambda: 0.5)
    broken = []
    for n in range(1000):
        try:
            handlers.demo(f"good-{n}")
        except ValueError as exc:
            broken.append(str(exc))
    # Then about 1 in 100 items is broken, every time, with a clear error
    assert 3 <= len(broken) <= 30
    assert "simulated broken record" in broken[0]
    # And with bad luck any item fails with a timeout that a retry may clear
    monkeypatch.setattr(handlers.random, "random", lambda: 0.01)
    with pytest.raises(TimeoutError, match="simulated"):
        handlers.demo("good-1")


@pytest.mark.parametrize(
    ("argv0", "on_path", "command"),
    [
        # installed: the goodsd on PATH is this one
        ("/usr/bin/goodsd", "/usr/bin/goodsd", "goodsd"),
        # a clone's venv (./dev demo), relative to where it started: no shell finds it by name
        (".venv/bin/goodsd", None, f"{os.getcwd()}/.venv/bin/goodsd"),
        # another goodsd is on PATH: name this one
        ("/srv/clone/.venv/bin/goodsd", "/usr/bin/goodsd", "/srv/clone/.venv/bin/goodsd"),
        # python -m goodsd
        ("/srv/clone/goodsd/__main__.py", "/usr/bin/goodsd", "/srv/py/bin/python -m goodsd"),
    ],
)
def test_the_demo_names_the_goodsd_that_runs_it(argv0, on_path, command):
    assert demo.own_command(argv0, "/srv/py/bin/python", on_path) == command
