"""Process titles: `ps` and `systemctl status` tell the master and each child apart, for every
role and slot, and a restarted child is named again."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from support import wait_for

STARTED = re.compile(r"started (consumer|producer) (\d+) \(pid (\d+)\)")


def cmdline(pid: int) -> str:
    """What `ps -o args` shows for ``pid``; "" once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")


def expected_titles(daemon, queue: str) -> dict[int, str]:
    """pid -> the title its role and slot call for, for every child the log says started."""
    return {
        int(pid): f"goodsd: {role} {slot} [{queue}]"
        for role, slot, pid in STARTED.findall(daemon.log())
    }


def all_titled(daemon, queue: str, count: int) -> dict[int, str] | None:
    """The live children's titles once ``count`` of them run and each shows the title of its
    role and slot; None until then."""
    children = daemon.children()
    titles = {pid: cmdline(pid) for pid in children}
    wanted = expected_titles(daemon, queue)
    if len(children) == count and all(titles[pid] == wanted.get(pid) for pid in children):
        return titles
    return None


def test_master_and_every_child_say_what_they_are(r, make_config, start_daemon, notify):
    # Given a master with three consumers and two producers on the queue "goods-7"
    queue = "goods-7"
    config = make_config(
        queue=queue,
        consumers={"processes": 3},
        producer={
            "processes": 2,
            "source": "goodsd.sources:counter",
            "high_watermark": 100,
            "low_watermark": 50,
        },
    )
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    # Then the master names its config file
    assert cmdline(daemon.pid) == f"goodsd: master -c {config}"
    assert Path(f"/proc/{daemon.pid}/comm").read_text().startswith("goodsd: master")
    # And every child names its role, its slot and the queue
    titles = wait_for(lambda: all_titled(daemon, queue, 5), 10, "five titled children")
    assert sorted(titles.values()) == [
        "goodsd: consumer 0 [goods-7]",
        "goodsd: consumer 1 [goods-7]",
        "goodsd: consumer 2 [goods-7]",
        "goodsd: producer 0 [goods-7]",
        "goodsd: producer 1 [goods-7]",
    ]
    # When a consumer dies
    victim = next(pid for pid, title in titles.items() if title.endswith("consumer 1 [goods-7]"))
    os.kill(victim, signal.SIGKILL)
    # Then its replacement in the same slot is named like it
    wait_for(lambda: victim not in daemon.children(), 10, "the dead consumer reaped")
    replaced = wait_for(lambda: all_titled(daemon, queue, 5), 10, "the replacement titled")
    assert sorted(replaced.values()) == sorted(titles.values())
    assert victim not in replaced
