"""goodsd's Lua scripts: read once, at import, from the package's ``scripts/`` directory.

An entry script (``scripts/<name>.lua``) pulls in the routines it shares with others from
``scripts/lib/`` with lines of the form ``--#include lib/<file>.lua``, each replaced by that
file's text. Every script receives its keys through ``KEYS`` (so they may live in one Redis
Cluster slot) and never builds a key name from ``ARGV``. The server's clock (``TIME``) times
leases and retries, so hosts with skewed clocks agree.
"""

from __future__ import annotations

import re
from importlib import resources

import redis
from redis.client import Pipeline
from redis.commands.core import Script

_INCLUDE = re.compile(r"^--#include (\S+)$", re.MULTILINE)
_NAMES = (
    "claim",
    "settle",
    "requeue",
    "held",
    "push",
    "lock_acquire",
    "lock_extend",
    "lock_release",
    "requeue_dead",
)


def _read(path: str) -> str:
    return resources.files(__package__).joinpath("scripts", path).read_text(encoding="utf-8")


def _compose(name: str) -> str:
    """An entry script with its includes in place (a function: its text is taken literally)."""
    return _INCLUDE.sub(lambda include: _read(include.group(1)), _read(f"{name}.lua"))


# Script name -> its whole text, as sent to Redis.
SOURCES = {name: _compose(name) for name in _NAMES}


class ScriptsReloaded(redis.ConnectionError):
    """Redis lost its script cache mid-pipeline; retry the step the way a dropped connection
    is retried."""


def register(client: redis.Redis, name: str) -> Script:
    """The script ``name`` for ``client``: sent by hash, and by text once Redis lacks it."""
    return client.register_script(SOURCES[name])


def in_pipeline(pipe: Pipeline, script: Script, keys: list[str], args: list[object]) -> None:
    """Queue a script by its hash alone. redis-py's own way (``script(client=pipe)``) asks
    SCRIPT EXISTS before every pipeline: a second round trip on the hot path."""
    pipe.evalsha(script.sha, len(keys), *keys, *args)


def execute(client: redis.Redis, pipe: Pipeline, pipelined: tuple[Script, ...]) -> list[object]:
    """Run a pipeline holding ``pipelined`` scripts. After a Redis restart its script cache is
    empty: load them and raise ScriptsReloaded, like a dropped connection, so that the caller's
    retry path (an idempotent settle, a claim read back from the in-flight list) sorts out which
    of the pipeline's commands ran."""
    try:
        return pipe.execute()
    except redis.exceptions.NoScriptError as exc:
        for script in pipelined:
            client.script_load(script.script)
        raise ScriptsReloaded("redis had forgotten goodsd's scripts; loaded again") from exc
