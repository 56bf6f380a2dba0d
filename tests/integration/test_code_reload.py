"""A reload deploys new handler code: children whose loaded code changed on disk are rolled
(new up before old go); a reload that only resizes restarts nobody."""

from __future__ import annotations

import textwrap
from pathlib import Path

from support import wait_for
from test_reload import reload

HANDLER = """
import os
import redis

VERSION = {version}
_client = redis.Redis.from_url(os.environ["TEST_REDIS_URL"])


def handle(item):
    _client.rpush("test:handled", f"v{{VERSION}}:{{item}}")
"""


def write_handler(directory: Path, version: int) -> None:
    path = directory / "versioned_handler.py"
    path.write_text(textwrap.dedent(HANDLER.format(version=version)))


def test_a_reload_runs_the_code_on_disk(r, tmp_path, make_config, start_daemon, notify):
    # Given consumers running version 1 of a handler
    code = tmp_path / "code"
    code.mkdir()
    write_handler(code, 1)
    config = make_config(pythonpath=[str(code)], consumers={"handler": "versioned_handler:handle"})
    daemon = start_daemon(config, notify=notify)
    notify.wait("READY", "1")
    r.lpush("q", "a")
    wait_for(lambda: r.lrange("test:handled", 0, -1) == [b"v1:a"], 10, "v1 handling a")
    old = daemon.children()
    # When a reload that changes only the pool's size comes, with the code unchanged
    make_config(
        pythonpath=[str(code)], consumers={"handler": "versioned_handler:handle", "processes": 3}
    )
    reload(daemon, notify)
    # Then nobody restarts
    assert old < daemon.children()
    # When the handler is edited on disk and goodsd reloads the unchanged file
    write_handler(code, 2)
    reload(daemon, notify)
    # Then every item claimed after READY=1 runs the new code, in new children
    assert not (daemon.children() & old)
    r.lpush("q", *[f"b{i}" for i in range(20)])
    wait_for(lambda: r.llen("test:handled") == 21, 10, "the new items handled")
    assert all(x.startswith(b"v2:") for x in r.lrange("test:handled", 1, -1))
    daemon.wait_log(r"consumer code changed on disk \(.*versioned_handler\.py\)")
