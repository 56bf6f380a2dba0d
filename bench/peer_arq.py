"""arq's side of bench/concurrency.py; runs in the peers' virtualenv, never in goodsd's.

As a module it holds ``WorkerSettings`` for the ``arq`` command: Redis on $BENCH_COUNTER_URL,
one function per async handler of bench/sleep_handlers.py (awaiting the same functions goodsd's
async rows run), named as the handler, ``max_jobs`` from $BENCH_ARQ_MAX_JOBS and
``poll_delay`` (seconds) from $BENCH_ARQ_POLL_DELAY, arq's defaults for everything else, and a
start-up hook that counts each worker process up (``READY``). As a script it writes the
backlog in arq's own format (its job serializer, the job key and the queue's sorted set, as
its ``enqueue_job`` writes them, pipelined):

    python peer_arq.py FUNCTION N    (items good0 .. good<N-1>, to arq's default queue)
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import redis
import sleep_handlers
from arq.connections import RedisSettings
from arq.constants import default_queue_name, expires_extra_ms, job_key_prefix
from arq.jobs import serialize_job
from arq.worker import Function, func

PIPELINE = 1_000  # jobs written per round trip


HANDLERS = ("async_sleep_1ms", "async_sleep_10ms", "async_sleep_only_1ms", "async_sleep_only_10ms")


def job(handler: Callable[[str], Awaitable[None]]) -> Function:
    """``handler`` as an arq function of its own name (arq passes a context first)."""

    async def run(ctx: dict[str, Any], item: str) -> None:
        await handler(item)

    return func(run, name=handler.__name__)


async def count_ready(ctx: dict[str, Any]) -> None:
    sleep_handlers.ready()


class WorkerSettings:
    """What ``arq peer_arq.WorkerSettings`` runs with."""

    functions: ClassVar = [job(getattr(sleep_handlers, name)) for name in HANDLERS]
    redis_settings = RedisSettings.from_dsn(os.environ["BENCH_COUNTER_URL"])
    max_jobs = int(os.environ.get("BENCH_ARQ_MAX_JOBS", "10"))
    poll_delay = float(os.environ.get("BENCH_ARQ_POLL_DELAY", "0.5"))
    on_startup = count_ready


def enqueue(function: str, items: int) -> None:
    """Write ``items`` jobs of ``function``, due now, each with a random job id."""
    r = redis.Redis.from_url(os.environ["BENCH_COUNTER_URL"])
    now_ms = int(time.time() * 1000)
    pipe = r.pipeline(transaction=False)
    for i in range(items):
        job_id = uuid.uuid4().hex
        job = serialize_job(function, (f"good{i}",), {}, None, now_ms)
        pipe.psetex(job_key_prefix + job_id, expires_extra_ms, job)
        pipe.zadd(default_queue_name, {job_id: now_ms})
        if len(pipe) >= 2 * PIPELINE:
            pipe.execute()
    pipe.execute()


if __name__ == "__main__":
    enqueue(sys.argv[1], int(sys.argv[2]))
