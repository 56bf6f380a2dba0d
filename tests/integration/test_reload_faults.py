"""Nothing in a reload can kill the master: whatever goes wrong while reading, validating or
applying a new config (or connecting for it) rejects that reload, the old config keeps
running, READY=1 follows and STATUS= says why. New children that keep crashing roll back too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from support import wait_for
from test_reload import reload


def deep_queue(config: Path) -> None:
    text = config.read_text().replace("queue: q", "queue: " + "[" * 300 + "]" * 300)
    config.write_text(text)


def bad_url_query(config: Path) -> None:
    data = yaml.safe_load(config.read_text())
    data["redis"]["url"] = data["redis"]["url"] + "?socket_timeout=abc"
    config.write_text(yaml.safe_dump(data))


def undecodable_password_file(config: Path) -> None:
    secret = config.parent / "password"
    secret.write_bytes(b"\xff\xfe not utf-8")
    secret.chmod(0o600)
    data = yaml.safe_load(config.read_text())
    data["redis"]["password_file"] = str(secret)
    config.write_text(yaml.safe_dump(data))


def not_a_regular_file(config: Path) -> None:
    config.unlink()
    config.mkdir()


def unreachable_redis(config: Path) -> None:
    data = yaml.safe_load(config.read_text())
    data["redis"]["url"] = f"unix://{config.parent}/no-redis-here.sock"
    config.write_text(yaml.safe_dump(data))


@pytest.mark.parametrize(
    "break_config",
    [deep_queue, bad_url_query, undecodable_password_file, not_a_regular_file, unreachable_redis],
)
def test_a_reload_that_fails_in_any_way_keeps_the_old_config(
    break_config, r, make_config, start_daemon, notify
):
    # Given a running pool handling items
    config = make_config(consumers={"handler": "sample_handlers:record"})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    before = daemon.children()
    # When the file is broken in a way the loader or the master trips over, and goodsd reloads
    break_config(config)
    ready = reload(daemon, notify)
    # Then the master lives on with the same children, and says why the reload failed
    assert "last reload failed" in ready["STATUS"], ready
    assert daemon.proc.poll() is None and daemon.children() == before
    daemon.wait_log(r"reload rejected")
    # And the old config keeps serving
    r.lpush("q", "after")
    wait_for(lambda: r.lrange("test:handled", 0, -1) == [b"after"], 10, "the item handled")


@pytest.mark.parametrize("form", ["redis+sentinel", "redis+cluster"])
def test_a_reload_to_hosts_that_never_answer_is_refused_without_holding_the_master(
    form, silent_ports, r, make_config, start_daemon, notify
):
    # Given a running pool
    config = make_config(consumers={"handler": "sample_handlers:record"})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    before = daemon.children()
    # When the new config names 64 hosts that take connections and never answer (asked one
    # after another, they would hold the master's loop for 64 timeouts of 2 s: over two
    # minutes, four times systemd's watchdog)
    hosts = ",".join(f"127.0.0.1:{port}" for port in silent_ports)
    data = yaml.safe_load(config.read_text())
    data["redis"]["url"] = f"{form}://{hosts}" + ("/goods" if form == "redis+sentinel" else "")
    config.write_text(yaml.safe_dump(data))
    ready = reload(daemon, notify)
    # Then the reload is refused within reload()'s 20 s, saying that Redis could not be
    # checked and how many hosts were left for a later try
    assert re.search(r"last reload failed: .* cannot be checked: .*more not", ready["STATUS"])
    # And the master lives on with the same children, serving
    assert daemon.proc.poll() is None and daemon.children() == before
    r.lpush("q", "after")
    wait_for(lambda: r.lrange("test:handled", 0, -1) == [b"after"], 10, "the item handled")


def test_a_reload_whose_new_children_keep_crashing_rolls_back(r, make_config, start_daemon, notify):
    # Given a running pool
    config = make_config(consumers={"handler": "sample_handlers:record"})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    before = daemon.children()
    # When a reload brings a setup that crashes every new child (not a load failure)
    r.set("test:fail-setup", 1)
    make_config(
        consumers={
            "handler": "sample_handlers:record",
            "setup": "sample_handlers:setup_fails_when_flagged",
        }
    )
    reload(daemon, notify)
    # Then after a few failed starts the reload is undone: the old children serve on and
    # STATUS= says why
    daemon.wait_log(r"reload failed, going back to the previous config", timeout=20)
    wait_for(
        lambda: "last reload failed" in notify.poll()[-1][1].get("STATUS", ""),
        10,
        "STATUS naming the failed reload",
    )
    assert daemon.children() == before
    r.lpush("q", "after")
    wait_for(lambda: r.lrange("test:handled", 0, -1) == [b"after"], 10, "the item handled")


def test_a_reload_whose_new_children_crash_on_their_first_items_rolls_back(
    r, make_config, start_daemon, notify
):
    # Given a running pool recording items
    settings = {"batch": 1, "retries": 10, "retry_delay": "100ms"}
    config = make_config(consumers={"handler": "sample_handlers:record", **settings})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When a reload brings a handler that kills its worker on every item, and items come
    make_config(consumers={"handler": "sample_handlers:crash", **settings})
    reload(daemon, notify)
    r.lpush("q", "good1", "good2")
    # Then after a few crashes the reload is undone, the old handler serves again, and the
    # items the crashes cost an attempt are retried and handled
    daemon.wait_log(r"reload failed, going back to the previous config", timeout=30)
    wait_for(
        lambda: sorted(r.lrange("test:handled", 0, -1)) == [b"good1", b"good2"],
        30,
        "both items handled by the old handler",
    )


def test_a_reload_to_a_redis_that_does_not_answer_says_why(r, make_config, start_daemon, notify):
    # Given a running pool
    config = make_config(consumers={"handler": "sample_handlers:record"})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # When the new config names a Redis that does not answer
    unreachable_redis(config)
    ready = reload(daemon, notify)
    # Then the reload is refused rather than put in force unchecked, saying why
    assert re.search(
        r"last reload failed: .*redis at unix://\S+/no-redis-here\.sock cannot be checked: "
        r"unreachable \(",
        ready["STATUS"],
    ), ready
