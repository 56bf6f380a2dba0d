"""`goodsd dead list|requeue|purge`: look at items that used up their attempts, give them
another chance, or drop them. Requeued items go to the pop end, so they run next, with their
attempts counted from zero again."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from typing import TextIO

from goodsd.config import Config
from goodsd.logs import printable
from goodsd.ops.common import OpsError, open_queue, redis_errors, span, table
from goodsd.queue import Queue, dead_payload

# Records per round trip when scanning or requeuing the dead list.
PAGE = 1000
# Width of the ITEM column in the human list; --json has the whole item.
ITEM_WIDTH = 40


def item_text(record: dict[str, object]) -> str:
    if "item_b64" in record:
        return f"base64:{record['item_b64']}"
    return printable(str(record.get("item", "")))


def render_list(records: list[dict[str, object]], total: int, now: float) -> str:
    """Newest first: age, attempts, item, last error."""
    if not total:
        return "the dead list is empty\n"
    rows = []
    for record in records:
        at = record.get("at")
        age = span(now - at) + " ago" if isinstance(at, int | float) and at else "?"
        item = item_text(record)
        if len(item) > ITEM_WIDTH:
            item = item[: ITEM_WIDTH - 3] + "..."
        attempts = record.get("attempts")
        rows.append(
            [
                age,
                attempts if isinstance(attempts, int) else "?",
                item,
                printable(str(record.get("error", ""))),
            ]
        )
    lines = table(["WHEN", "ATTEMPTS", "ITEM", "LAST ERROR"], rows, indent="")
    shown = f"{len(records)} newest of {total}" if len(records) < total else f"all {total}"
    return "\n".join([*lines, f"({shown} dead record(s))"]) + "\n"


def list_main(cfg: Config, *, limit: int, as_json: bool, out: TextIO = sys.stdout) -> int:
    queue = open_queue(cfg, "dead")
    with redis_errors(cfg):
        total = queue.dead_count()
        records = queue.dead_records(limit)
    if as_json:
        out.write(json.dumps({"queue": cfg.queue, "dead": total, "records": records}) + "\n")
    else:
        out.write(render_list(records, total, time.time()))
    return 0


def requeue_all(queue: Queue) -> int:
    """Everything dead now, oldest first; records that die meanwhile wait for the next run
    (they arrive at the other end of the list), so a failing handler cannot keep this busy."""
    todo = queue.dead_count()
    moved = 0
    while todo > 0:
        records = queue.dead_oldest(min(PAGE, todo))
        if not records:
            break
        moved += queue.requeue_dead(records)
        todo -= len(records)
    return moved


def requeue_matching(queue: Queue, items: list[bytes]) -> Counter[bytes]:
    """Every dead record of each item (equal items died as separate copies); returns how many
    were requeued per item."""
    wanted = set(items)
    found = [record for record in queue.dead_scan(PAGE) if dead_payload(record) in wanted]
    moved: Counter[bytes] = Counter()
    for start in range(0, len(found), PAGE):
        chunk = found[start : start + PAGE]
        if queue.requeue_dead(chunk) == len(chunk):
            moved.update(dead_payload(record) for record in chunk)
        else:  # another operator took some of them: count one by one
            for record in chunk:
                moved[dead_payload(record)] += queue.requeue_dead([record])
    return moved


def requeue_main(
    cfg: Config,
    *,
    items: list[str],
    everything: bool,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    queue = open_queue(cfg, "dead")
    with redis_errors(cfg):
        if everything:
            moved = requeue_all(queue)
            out.write(f"requeued {moved} item(s) to {cfg.queue!r}\n")
            return 0
        wanted = [os.fsencode(item) for item in items]
        counts = requeue_matching(queue, wanted)
    out.write(f"requeued {sum(counts.values())} item(s) to {cfg.queue!r}\n")
    missing = [item for item in dict.fromkeys(wanted) if not counts[item]]
    for item in missing:
        err.write(f"goodsd: dead requeue: not in the dead list: {os.fsdecode(item)!r}\n")
    return 1 if missing else 0


def purge_main(
    cfg: Config,
    *,
    yes: bool,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    stdin: TextIO | None = None,
) -> int:
    stdin = stdin if stdin is not None else sys.stdin
    queue = open_queue(cfg, "dead")
    with redis_errors(cfg):
        count = queue.dead_count()
    if not count:
        out.write(f"the dead list of {cfg.queue!r} is already empty\n")
        return 0
    if not yes:
        if not stdin.isatty():
            raise OpsError(
                f"dead purge: would delete {count} record(s) of {cfg.queue!r}; "
                "not asking without a terminal: add --yes"
            )
        err.write(f"delete {count} dead record(s) of queue {cfg.queue!r} for good? [y/N] ")
        err.flush()
        if stdin.readline().strip().lower() not in ("y", "yes"):
            err.write("nothing deleted\n")
            return 1
    with redis_errors(cfg):
        deleted = queue.purge_dead()
    out.write(f"deleted {deleted} dead record(s) of {cfg.queue!r}\n")
    return 0
