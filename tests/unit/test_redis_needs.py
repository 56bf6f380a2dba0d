"""The list of commands goodsd checks at start (redisconn.NEEDED_COMMANDS) keeps up with what
goodsd.store really sends: every command of its Lua scripts and of its client calls."""

from __future__ import annotations

import re
from pathlib import Path

import redis

import goodsd.store
from goodsd.redisconn import CHECK_ID, needed_commands
from goodsd.store import Upkeep

STORE = Path(goodsd.store.__file__).parent
# Scripts only the operator commands run (goodsd dead requeue): they report their own refusals.
OPS_ONLY_SCRIPTS = {"requeue_dead.lua"}
# Modules only the operator commands use, for the same reason.
OPS_ONLY_MODULES = {"views.py"}
# Client methods that send no command of their own, and those that send another name.
NOT_COMMANDS = {"pipeline", "execute", "register_script"}
COMMAND_OF = {"delete": "DEL", "script_load": "SCRIPT LOAD"}


def probed() -> set[str]:
    client = redis.Redis(unix_socket_path="/nonexistent.sock")  # never connects
    return {probe.name for probe in needed_commands(Upkeep(client, "q"), waits=True)}


def test_every_command_of_the_daemons_scripts_is_checked():
    scripts = [p for p in STORE.glob("scripts/**/*.lua") if p.name not in OPS_ONLY_SCRIPTS]
    called = {
        cmd for path in scripts for cmd in re.findall(r"redis\.call\('(\w+)'", path.read_text())
    }
    assert called, "no script found"
    assert called - probed() == set()


def test_every_command_the_store_sends_itself_is_checked():
    sources = [p for p in STORE.glob("*.py") if p.name not in OPS_ONLY_MODULES]
    methods = {
        method
        for path in sources
        for method in re.findall(r"\b(?:pipe|self\.client|client)\.([a-z_]+)\(", path.read_text())
    }
    sent = {COMMAND_OF.get(m, m.upper()) for m in methods - NOT_COMMANDS}
    assert sent - probed() == set()


def test_the_checked_keys_are_this_queues():
    client = redis.Redis(unix_socket_path="/nonexistent.sock")
    probes = needed_commands(Upkeep(client, "orders"))
    keys = {key for probe in probes for key in probe.keys}
    assert "orders" in keys
    assert all(key == "orders" or key.startswith("goodsd:{orders}:") for key in keys)
    assert "goodsd:{orders}:inflight:" + CHECK_ID in keys
    for probe in probes:
        assert set(probe.keys) <= set(probe.args)
