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


# How long a write waits for its replicas' acknowledgements (see ``call_and_wait``): well
# below every process's socket timeout.
WAIT_TIMEOUT_MS = 1000


class TooFewReplicas(redis.ResponseError):
    """A write the primary made, acknowledged by fewer replicas than asked for in time: a
    failover now could lose it. Worded as Redis's own NOREPLICAS refusal, an outage that the
    caller waits out by repeating the (idempotent) write."""


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


def call_and_wait(
    client: redis.Redis, script: Script, keys: list[str], args: list[object], replicas: int
) -> object:
    """Run ``script`` and then WAIT for ``replicas`` replicas to acknowledge it, in one round
    trip on one connection (WAIT counts the writes of its own connection). Returns the
    script's reply; raises TooFewReplicas when fewer acknowledged within WAIT_TIMEOUT_MS (the
    write stands on the primary: repeat it, which a push or a settle takes as a no-op that
    still writes, so the next WAIT covers the first try too), after closing the client's idle
    connections, so that the repeat connects anew."""
    for _ in range(2):
        pipe = client.pipeline(transaction=False)
        in_pipeline(pipe, script, keys, args)
        pipe.wait(replicas, WAIT_TIMEOUT_MS)
        try:
            reply, acknowledged = pipe.execute()
            break
        except redis.exceptions.NoScriptError:  # nothing ran: load it and try once more
            client.script_load(script.script)
    else:
        raise ScriptsReloaded("redis forgot goodsd's scripts again as they were loaded")
    if int(acknowledged) < replicas:
        # The primary may have been cut off from its replicas and replaced: the next call
        # connects anew (with a Sentinel URL, asking the sentinels again). The repeated write
        # comes later in the replication stream, so its WAIT covers this one too.
        client.connection_pool.disconnect(inuse_connections=False)
        raise TooFewReplicas(
            f"NOREPLICAS {acknowledged} of {replicas} replica(s) acknowledged the write within "
            f"{WAIT_TIMEOUT_MS} ms"
        )
    return reply
