"""`goodsd status`: the queue at a glance, from Redis alone.

Rates (done/s, failed/s, pushed/s) are the difference of two reads of the fleet counters: one
second apart for a single view, between refreshes with ``--watch``. Pure functions build and
render the view, so its layout is unit-tested without Redis.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from goodsd.config import Config
from goodsd.ops.common import OpsError, Screen, display_url, open_queue, redis_errors, span, table
from goodsd.store import ConsumerLoad, MasterEntry, Overview, ProducerRecord, Views

# A master whose registry entry is older than this is not counted as live (it refreshes it
# every 2 s; a few missed beats are tolerated).
LIVE_WITHIN = 10.0
# How long a single `goodsd status` watches the counters to tell rates.
RATE_SAMPLE = 1.0
RATE_FIELDS = ("done", "failed", "pushed")


@dataclass(frozen=True)
class Sample:
    """The fleet counters at one moment (monotonic clock), the base of the next rates."""

    stats: dict[str, int]
    at: float


def rates(before: Sample, after: Sample) -> dict[str, float]:
    """Items per second between two samples; a counter that went back (reset) counts 0."""
    seconds = after.at - before.at
    out: dict[str, float] = {}
    for name in RATE_FIELDS:
        delta = after.stats.get(name, 0) - before.stats.get(name, 0)
        out[f"{name}_per_s"] = round(max(delta, 0) / seconds, 1) if seconds > 0 else 0.0
    out["over_s"] = round(seconds, 2)
    return out


def build(
    *,
    queue: str,
    url: str,
    overview: Overview,
    loads: list[ConsumerLoad],
    masters: dict[str, MasterEntry],
    producers: dict[str, ProducerRecord],
    rate: dict[str, float] | None,
    now: float,
) -> dict[str, object]:
    """The whole view as plain data: what --json prints and what the human view renders.
    A consumer's ``running`` (items it runs now) comes from its master's entry; None when
    no live master reports it."""
    live = []
    running: dict[str, int] = {}
    for master_id, entry in sorted(masters.items(), key=lambda kv: (str(kv[1].host), kv[0])):
        seen = entry.seen or 0.0
        if now - seen > LIVE_WITHIN:
            continue
        running.update(entry.running or {})
        live.append(
            {
                "id": master_id,
                "host": entry.host,
                "pid": entry.pid,
                "version": entry.version,
                "consumers": entry.consumers,
                "producers": entry.producers,
                "up_s": round(now - _or(entry.started, now), 1),
                "seen_s_ago": round(max(now - seen, 0.0), 1),
            }
        )
    return {
        "queue": queue,
        "redis": url,
        "time": round(now, 3),
        "backlog": overview.backlog,
        "in_flight": overview.in_flight,
        "retry_waiting": overview.retry_waiting,
        "dead": overview.dead,
        "rates": rate,
        "totals": overview.stats,
        "masters": live,
        "consumers": [
            {
                "id": load.id,
                "host": load.host,
                "pid": load.pid,
                "in_flight": load.in_flight,
                "running": running.get(load.id),
                "lease_left_s": None if load.lease_left is None else round(load.lease_left, 1),
            }
            for load in loads
        ],
        "producers": [
            {
                "id": producer_id,
                "host": record.host,
                "pid": record.pid,
                "state": record.state,
                "pushed": record.pushed,
                "lock": record.lock,
                "updated_s_ago": round(max(now - _or(record.updated, now), 0.0), 1),
            }
            for producer_id, record in sorted(producers.items())
        ],
    }


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def render(view: dict[str, object]) -> str:
    """The compact human view of ``build``'s data."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(view["time"])))  # type: ignore[arg-type]
    lines = [f"queue {view['queue']!r} on {view['redis']}    {when}", ""]
    lines += _summary(view)
    totals = view["totals"]
    assert isinstance(totals, dict)
    lines += ["", "  totals: " + "  ".join(f"{k} {v}" for k, v in totals.items()), ""]

    masters = view["masters"]
    assert isinstance(masters, list)
    if masters:
        lines.append(f"masters: {len(masters)} live")
        lines += table(
            ["HOST", "PID", "VERSION", "CONSUMERS", "PRODUCERS", "UP", "SEEN"],
            [
                [
                    m["host"],
                    m["pid"],
                    m["version"],
                    m["consumers"],
                    m["producers"],
                    span(m["up_s"]),
                    span(m["seen_s_ago"]) + " ago",
                ]
                for m in masters
            ],
        )
    else:
        lines.append(f"masters: none live (none reported in the last {LIVE_WITHIN:g}s)")

    consumers = view["consumers"]
    assert isinstance(consumers, list)
    lines.append("")
    if consumers:
        lines.append(f"consumers: {len(consumers)}, holding {view['in_flight']} item(s)")
        lines += table(
            ["HOST", "PID", "ITEMS", "RUNNING", "LEASE LEFT"],
            [
                [
                    c["host"],
                    c["pid"],
                    c["in_flight"],
                    "-" if c["running"] is None else c["running"],
                    "expired" if c["lease_left_s"] is None else span(c["lease_left_s"]),
                ]
                for c in consumers
            ],
        )
    else:
        lines.append("consumers: none registered")

    producers = view["producers"]
    assert isinstance(producers, list)
    if producers:
        lines += ["", f"producers: {len(producers)}"]
        lines += table(
            ["HOST", "PID", "STATE", "PUSHED", "LOCK", "UPDATED"],
            [
                [
                    p["host"],
                    p["pid"],
                    p["state"],
                    p["pushed"],
                    "held" if p["lock"] else "-",
                    span(p["updated_s_ago"]) + " ago",
                ]
                for p in producers
            ],
        )
    return "\n".join(lines) + "\n"


def _summary(view: dict[str, object]) -> list[str]:
    """Counts on the left, rates on the right, each column aligned."""
    left = [
        ("backlog", view["backlog"]),
        ("in flight", view["in_flight"]),
        ("retry waiting", view["retry_waiting"]),
        ("dead", view["dead"]),
    ]
    rate = view["rates"]
    if isinstance(rate, dict):
        right = [f"{name:<7} {rate[name + '_per_s']:>9.1f}/s" for name in RATE_FIELDS]
        right.append(f"(rates over the last {rate['over_s']:g}s)")
    else:
        right = ["rates: measuring..."]
    width = max(len(str(value)) for _, value in left)
    return [
        f"  {label:<14} {value!s:>{width}}     {extra}".rstrip()
        for (label, value), extra in zip(left, [*right, "", "", ""], strict=False)
    ]


def sample(queue: Views) -> Sample:
    return Sample(queue.stats(), time.monotonic())


def collect(queue: Views, cfg: Config, before: Sample | None) -> tuple[dict[str, object], Sample]:
    """Read everything once; returns the view and the counters sample for the next rates."""
    overview = queue.overview()
    after = Sample(overview.stats, time.monotonic())
    view = build(
        queue=cfg.queue,
        url=display_url(cfg.redis.url),
        overview=overview,
        loads=queue.consumer_loads(),
        masters=queue.masters(),
        producers=queue.producers(),
        rate=rates(before, after) if before else None,
        now=time.time(),
    )
    return view, after


def main(cfg: Config, *, as_json: bool, watch: float | None, out: TextIO = sys.stdout) -> int:
    queue = open_queue(cfg, "status")
    if watch is None:
        with redis_errors(cfg):
            before = sample(queue)
            time.sleep(RATE_SAMPLE)
            view, _ = collect(queue, cfg, before)
        out.write(json.dumps(view) + "\n" if as_json else render(view))
        return 0
    return watch_loop(queue, cfg, watch, as_json, out)


def watch_loop(queue: Views, cfg: Config, interval: float, as_json: bool, out: TextIO) -> int:
    """Refresh until Ctrl-C; Redis going away shows in the view instead of ending it."""
    screen = None if as_json else Screen(out)
    if screen:
        screen.start()
    last: Sample | None = None
    try:
        while True:
            try:
                with redis_errors(cfg):
                    view, last = collect(queue, cfg, last)
            except OpsError as exc:
                last = None
                view = {"time": round(time.time(), 3), "error": str(exc)}
            if screen is None:
                out.write(json.dumps(view) + "\n")
                out.flush()
            else:
                screen.show(render(view) if "error" not in view else f"{view['error']}\n(retrying)")
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
    finally:
        if screen:
            screen.end()
