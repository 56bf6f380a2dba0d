"""`goodsd dead list|requeue|purge`: look at items that used up their attempts, give them
another chance, or drop them. Requeued items go to the pop end, so they run next, with their
attempts counted from zero again.

Items are any bytes; on the command line each one has exactly one spelling (see
``requeue_argument``), and `dead list` shows items in it, so what it shows can be requeued."""

from __future__ import annotations

import base64
import binascii
import json
import os
import shlex
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import TextIO

from goodsd.config import DEFAULT_PATH, Config
from goodsd.logs import printable
from goodsd.ops.common import OpsError, open_queue, redis_errors, span, table
from goodsd.store import DeadRecord, Views

# Records per round trip when scanning or requeuing the dead list.
PAGE = 1000
# Width of the ITEM column in the human list; longer items are cut there and given whole as a
# requeue command below the table (--json has them whole too).
ITEM_WIDTH = 40
# An ITEM argument that starts with this is the base64 of the item's bytes.
BASE64_PREFIX = "base64:"


def requeue_argument(item: bytes) -> str:
    """The one ITEM argument of `goodsd dead requeue` that names ``item``: the item itself when
    it is plain text (UTF-8, printable, not empty, no space at either end, not starting with
    ``-`` or ``base64:``), else ``base64:`` and its base64. So every spelling means one item,
    an item that starts with ``base64:`` included, and none reads as an option or loses
    bytes on its way through a terminal or a shell."""
    try:
        text = item.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    plain = (
        text.isprintable() and text == text.strip() and not text.startswith(("-", BASE64_PREFIX))
    )
    if text and plain:
        return text
    return BASE64_PREFIX + base64.b64encode(item).decode("ascii")


def item_from_argument(argument: str) -> bytes:
    """The item's bytes that an ITEM argument names (``requeue_argument`` in reverse); any
    argument without the prefix is the item byte for byte. Raises OpsError for a ``base64:``
    argument that is not valid base64."""
    if not argument.startswith(BASE64_PREFIX):
        return os.fsencode(argument)
    try:
        return base64.b64decode(argument[len(BASE64_PREFIX) :], validate=True)
    except binascii.Error:
        raise OpsError(
            f"dead requeue: {argument!r} is not valid base64 "
            f"(an item given as {BASE64_PREFIX}... is the base64 of its bytes)"
        ) from None


def requeue_command(argument: str, config_path: str) -> str:
    """The shell command that requeues the item spelled ``argument``."""
    config = ["-c", config_path] if config_path != DEFAULT_PATH else []
    return shlex.join(["goodsd", "dead", "requeue", *config, argument])


def render_list(
    records: list[DeadRecord], total: int, now: float, config_path: str = DEFAULT_PATH
) -> str:
    """Newest first: age, attempts, item (as its requeue argument), last error; then the
    whole requeue command of each item the ITEM column cuts."""
    if not total:
        return "the dead list is empty\n"
    rows = []
    commands = []
    for record in records:
        age = span(now - record.at) + " ago" if record.at else "?"
        item = requeue_argument(record.item)
        if len(item) > ITEM_WIDTH:
            commands.append("  " + requeue_command(item, config_path))
            item = item[: ITEM_WIDTH - 3] + "..."
        rows.append(
            [
                age,
                record.attempts if record.attempts is not None else "?",
                item,
                printable(record.error or ""),
            ]
        )
    lines = table(["WHEN", "ATTEMPTS", "ITEM", "LAST ERROR"], rows, indent="")
    shown = f"{len(records)} newest of {total}" if len(records) < total else f"all {total}"
    lines.append(f"({shown} dead record(s))")
    if commands:
        lines += ["requeue an item shown cut with:", *commands]
    return "\n".join(lines) + "\n"


def list_main(cfg: Config, *, limit: int, as_json: bool, out: TextIO = sys.stdout) -> int:
    queue = open_queue(cfg, "dead")
    with redis_errors(cfg):
        total = queue.dead_count()
        records = queue.dead_records(limit)
    if as_json:
        view = {"queue": cfg.queue, "dead": total, "records": [r.fields() for r in records]}
        out.write(json.dumps(view) + "\n")
    else:
        out.write(render_list(records, total, time.time(), cfg.path))
    return 0


def requeue_all(queue: Views) -> int:
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


def requeue_matching(queue: Views, items: list[bytes]) -> Counter[bytes]:
    """Every dead record of each item (equal items died as separate copies); returns how many
    were requeued per item."""
    wanted = set(items)
    found = [record for record in queue.dead_scan(PAGE) if _item(record) in wanted]
    moved: Counter[bytes] = Counter()
    for start in range(0, len(found), PAGE):
        chunk = found[start : start + PAGE]
        if queue.requeue_dead(chunk) == len(chunk):
            moved.update(_item(record) for record in chunk)
        else:  # another operator took some of them: count one by one
            for record in chunk:
                moved[_item(record)] += queue.requeue_dead([record])
    return moved


def _item(raw: bytes) -> bytes:
    """The item a raw dead record holds, byte for byte: what requeuing it puts back."""
    return DeadRecord.decode(raw).item


def requeue_main(
    cfg: Config,
    *,
    items: Sequence[str],
    everything: bool,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Requeue every dead item (``everything``) or those ``items`` name (see
    ``item_from_argument``); exit 1 when one of them is not in the dead list."""
    # Every argument is read before Redis is asked anything: a bad one changes nothing.
    wanted = {argument: item_from_argument(argument) for argument in items}
    queue = open_queue(cfg, "dead")
    with redis_errors(cfg):
        if everything:
            moved = requeue_all(queue)
            out.write(f"requeued {moved} item(s) to {cfg.queue!r}\n")
            return 0
        counts = requeue_matching(queue, list(wanted.values()))
    out.write(f"requeued {sum(counts.values())} item(s) to {cfg.queue!r}\n")
    missing = [argument for argument, item in wanted.items() if not counts[item]]
    for argument in missing:
        err.write(f"goodsd: dead requeue: not in the dead list: {argument!r}\n")
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
