"""Dramatiq's side of bench/concurrency.py; runs in the peers' virtualenv, never in goodsd's.

As a module it is what the ``dramatiq`` command loads: a Redis broker on $BENCH_COUNTER_URL
with Dramatiq's default middleware, plus one that counts each worker process up (``READY``),
and one actor per thread handler of bench/sleep_handlers.py (the same functions goodsd's rows
run), named as the handler. As a script it enqueues the backlog through Dramatiq's own API:

    python peer_dramatiq.py HANDLER N    (items good0 .. good<N-1>, to the queue "default")
"""

from __future__ import annotations

import os
import sys

import dramatiq
import sleep_handlers
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

HANDLERS = ("sleep_1ms", "sleep_10ms", "sleep_only_1ms", "sleep_only_10ms")


class CountReady(Middleware):
    """Counts each worker process once its worker threads are running."""

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        sleep_handlers.ready()


broker = RedisBroker(url=os.environ["BENCH_COUNTER_URL"])
broker.add_middleware(CountReady())
dramatiq.set_broker(broker)

actors = {name: dramatiq.actor(getattr(sleep_handlers, name)) for name in HANDLERS}


def enqueue(actor: dramatiq.Actor, items: int) -> None:
    """Send ``items`` messages to ``actor``, one ``send`` each, as an application would."""
    for i in range(items):
        actor.send(f"good{i}")


if __name__ == "__main__":
    enqueue(actors[sys.argv[1]], int(sys.argv[2]))
