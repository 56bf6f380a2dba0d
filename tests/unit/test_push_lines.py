"""`goodsd push` cuts stdin into items: the same items as a plain split of the whole input,
however the blocks fall; time linear in a line's length; memory bounded by the largest item,
whatever the input. No Redis, no processes."""

from __future__ import annotations

import random
import time
import tracemalloc
from collections.abc import Iterator

from goodsd.ops import push

MiB = 1 << 20


def reference(data: bytes, limit: int) -> tuple[list[bytes], int, list[tuple[int, int]]]:
    """The items of ``data`` split at once: (items, empty lines, refused (line number, size))."""
    lines = data.split(b"\n")
    if lines[-1] == b"":  # after a final \n: no line
        lines.pop()
    items, empty, refused = [], 0, []
    for number, line in enumerate(lines, start=1):
        item = line[:-1] if line.endswith(b"\r") else line
        if not item:
            empty += 1
        elif len(item) > limit:
            refused.append((number, len(item)))
        else:
            items.append(item)
    return items, empty, refused


def random_input(rng: random.Random, block_size: int) -> bytes:
    """Lines of every kind: empty, short, just around a block, many blocks long; \\n and \\r\\n
    endings; \\r and non-UTF-8 bytes inside; the last line with or without its newline."""
    lengths = [0, 1, 2, block_size - 1, block_size, block_size + 1, 7 * block_size + 3]
    lines = []
    for _ in range(rng.randint(0, 40)):
        length = rng.choice(lengths) if rng.random() < 0.5 else rng.randint(0, 3 * block_size)
        body = bytes(rng.choice(b"ab\r\xff") for _ in range(length))
        lines.append(body + rng.choice([b"\n", b"\r\n"]))
    data = b"".join(lines)
    return data[:-1] if data and rng.random() < 0.5 else data


def blocks_of(data: bytes, rng: random.Random, block_size: int) -> Iterator[bytes]:
    """``data`` in blocks of 1 to ``block_size`` bytes, as a pipe may deliver it."""
    start = 0
    while start < len(data):
        size = rng.randint(1, block_size)
        yield data[start : start + size]
        start += size


def split(blocks: Iterator[bytes], limit: int) -> tuple[list[bytes], push.Tally, list]:
    tally = push.Tally()
    refused: list[tuple[int, int]] = []
    groups = push.split_lines(
        blocks, tally, limit=limit, refuse=lambda number, size: refused.append((number, size))
    )
    items = [item for group in groups for item in group]
    return items, tally, refused


def test_split_lines_equals_a_plain_split_of_the_whole_input():
    for seed in range(300):
        # Given random lines of random lengths, cut into random blocks
        rng = random.Random(seed)
        block_size = rng.randint(1, 16)
        data = random_input(rng, block_size)
        # When they are split into items with no limit in reach
        items, tally, refused = split(blocks_of(data, rng, block_size), push.MAX_ITEM_BYTES)
        # Then the items are those of one split of the whole input, and all of it is counted
        expected, empty, _ = reference(data, push.MAX_ITEM_BYTES)
        assert (items, tally.skipped, refused) == (expected, empty, []), f"seed {seed}"
        assert tally.read == len(data)


def test_lines_over_the_limit_are_refused_by_number_and_size():
    for seed in range(300):
        # Given random input and a limit anywhere from 0 to a few blocks
        rng = random.Random(seed)
        block_size = rng.randint(1, 16)
        data = random_input(rng, block_size)
        limit = rng.choice([0, 1, block_size, 2 * block_size + 1, rng.randint(0, 8 * block_size)])
        # When it is split
        items, tally, refused = split(blocks_of(data, rng, block_size), limit)
        # Then exactly the lines longer than the limit (line ending not counted) are refused,
        # named by their line number and item size, and the others come out in order
        expected, empty, expected_refused = reference(data, limit)
        assert (items, tally.skipped, refused) == (expected, empty, expected_refused), seed
        assert tally.refused == len(refused)


def best_time(blocks: list[bytes]) -> float:
    """The fastest of three splits of ``blocks``, in seconds."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        items, _, _ = split(iter(blocks), push.MAX_ITEM_BYTES)
        times.append(time.perf_counter() - started)
        assert [len(item) for item in items] == [sum(map(len, blocks)) - 1]
    return min(times)


def test_a_long_line_takes_time_linear_in_its_length():
    # Given one line of 40 MiB and one of 160 MiB, read in blocks of the usual size (both over
    # 32 MiB, above which glibc's malloc always maps memory and grows it in place; below it,
    # memory reused from the round before makes one size look faster per byte than another)
    block = b"x" * push.READ_SIZE

    def line(mib: int) -> list[bytes]:
        return [block] * (mib * MiB // push.READ_SIZE) + [b"\n"]

    # When each is split
    short, long = best_time(line(40)), best_time(line(160))
    # Then 4 times the line takes about 4 times as long, not 16 (a ratio of two runs on the
    # same machine: an absolute bound would judge the machine's load, not the code)
    assert long < 8 * short, f"40 MiB: {short:.3f}s, 160 MiB: {long:.3f}s"


def fresh_blocks(mib: int) -> Iterator[bytes]:
    """A line of ``mib`` MiB in blocks of 1 MiB, each a new object as a read gives, then a
    newline and a short line."""
    for _ in range(mib):
        yield bytes(MiB)
    yield b"\ngood1\n"


def split_traced(blocks: Iterator[bytes], limit: int) -> tuple[list[bytes], push.Tally, list, int]:
    """``split``, and the most memory Python held at once meanwhile, in bytes."""
    tracemalloc.start()
    try:
        items, tally, refused = split(blocks, limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return items, tally, refused, peak


def test_a_long_line_is_held_about_once():
    # Given a 64 MiB line in fresh 1 MiB blocks, then a short line
    # When it is split
    items, _, _, peak = split_traced(fresh_blocks(64), push.MAX_ITEM_BYTES)
    # Then both are items, and the long one was not held twice on its way
    assert [len(item) for item in items] == [64 * MiB, 5]
    assert peak < 1.25 * 64 * MiB + 2 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_a_line_over_the_limit_is_dropped_as_it_is_read():
    # Given a 64 MiB line, over a 4 MiB limit, in fresh 1 MiB blocks, then a short line
    # When it is split
    items, tally, refused, peak = split_traced(fresh_blocks(64), 4 * MiB)
    # Then it is refused, the next line is kept, and no more than the limit was held at once
    assert (items, refused, tally.refused) == ([b"good1"], [(1, 64 * MiB)], 1)
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB"
