"""How fast `goodsd push` loads a file of one million lines, against its own private Redis.

Runs the real command (`python -m goodsd push -c CONFIG < FILE`), so the figure includes the
interpreter's start. For scale it also times one LPUSH round trip per item, the way a simple
producer loop does it.

    .venv/bin/python bench/push.py [--lines N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from goodsd.localredis import LocalRedis

BASELINE_ITEMS = 50_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="goodsd-bench-") as tmp, LocalRedis() as server:
        items = Path(tmp) / "items.txt"
        items.write_text("".join(f"good{i}\n" for i in range(args.lines)))
        config = Path(tmp) / "goodsd.yaml"
        config.write_text(
            f"redis: {{url: '{server.url}'}}\nqueue: bench\nconsumers: {{processes: 0}}\n"
        )
        client = server.client()

        with open(items, "rb") as stdin:
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "goodsd", "push", "-c", str(config)],
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                check=True,
            )
            elapsed = time.perf_counter() - started
        assert client.llen("bench") == args.lines
        size = items.stat().st_size / 1e6
        print(
            f"goodsd push: {args.lines:,} lines ({size:.1f} MB) in {elapsed:.2f}s"
            f" = {args.lines / elapsed:,.0f} items/s"
        )

        client.delete("bench")
        started = time.perf_counter()
        for i in range(BASELINE_ITEMS):
            client.lpush("bench", f"good{i}")
        baseline = BASELINE_ITEMS / (time.perf_counter() - started)
        print(f"one LPUSH per item (for scale): {baseline:,.0f} items/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
