"""The list of commands goodsd checks at start (redisconn.NEEDED_COMMANDS) keeps up with what
goodsd.queue really sends: every command of its Lua scripts and of its client calls."""

from __future__ import annotations

import re
from pathlib import Path

import redis

from goodsd import queue as queue_mod
from goodsd.queue import Queue
from goodsd.redisconn import CHECK_ID, needed_commands

# Scripts only the operator commands run (goodsd dead requeue): they report their own refusals.
OPS_ONLY_SCRIPTS = {"_REQUEUE_DEAD"}
# Client methods that send no command of their own, and those that send another name.
NOT_COMMANDS = {"pipeline", "execute", "register_script"}
COMMAND_OF = {"delete": "DEL", "script_load": "SCRIPT LOAD"}


def probed() -> set[str]:
    client = redis.Redis(unix_socket_path="/nonexistent.sock")  # never connects
    return {probe.name for probe in needed_commands(Queue(client, "q"))}


def test_every_command_of_the_daemons_scripts_is_checked():
    scripts = {
        name: text
        for name, text in vars(queue_mod).items()
        if isinstance(text, str) and "redis.call(" in text and name not in OPS_ONLY_SCRIPTS
    }
    called = {cmd for text in scripts.values() for cmd in re.findall(r"redis\.call\('(\w+)'", text)}
    assert called, "no script found"
    assert called - probed() == set()


def test_every_command_queue_sends_itself_is_checked():
    source = Path(queue_mod.__file__).read_text()
    methods = set(re.findall(r"\b(?:pipe|self\.client|client)\.([a-z_]+)\(", source))
    sent = {COMMAND_OF.get(m, m.upper()) for m in methods - NOT_COMMANDS}
    assert sent - probed() == set()


def test_the_checked_keys_are_this_queues():
    client = redis.Redis(unix_socket_path="/nonexistent.sock")
    probes = needed_commands(Queue(client, "orders"))
    keys = {key for probe in probes for key in probe.keys}
    assert "orders" in keys
    assert all(key == "orders" or key.startswith("goodsd:{orders}:") for key in keys)
    assert "goodsd:{orders}:inflight:" + CHECK_ID in keys
    for probe in probes:
        assert set(probe.keys) <= set(probe.args)
