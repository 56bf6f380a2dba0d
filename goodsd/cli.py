"""The command line: the only place that knows argv. Each subcommand is one small function."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

from goodsd import __version__, logs, metrics
from goodsd import config as config_mod
from goodsd.children import EXIT_CONFIG, EXIT_FAILURE
from goodsd.config import Config, ConfigError


def load_config(args: argparse.Namespace) -> Config:
    return config_mod.load(config_mod.resolve_path(args.config, os.environ))


def cmd_run(args: argparse.Namespace) -> int:
    """Run the master in the foreground (systemd's way)."""
    from goodsd.master import Master
    from goodsd.notify import Notifier

    cfg = load_config(args)
    logs.setup(cfg.logging.level, cfg.logging.format, "master")
    return Master(cfg, Notifier()).run()


# Imports what the config names, in a throwaway interpreter, so that `check` never runs user
# code in-process and sees the same sys.path a child would.
_IMPORT_PROBE = """
import sys
from goodsd import runner
runner.add_pythonpath(tuple(sys.argv[1].split("\\0")) if sys.argv[1] else ())
for spec in sys.argv[2:]:
    runner.load_callable(spec)
"""


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config and import the handler, like `nginx -t`."""
    cfg = load_config(args)
    metrics.require_client(cfg)
    specs = [s for s in (cfg.consumers.handler, cfg.consumers.setup, cfg.producer.source) if s]
    probe = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, "\0".join(cfg.pythonpath), *specs],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines()
        print(f"{cfg.path}: {lines[-1] if lines else 'import failed'}", file=sys.stderr)
        return EXIT_CONFIG
    c, p = cfg.consumers, cfg.producer
    work = c.handler if c.handler else "command " + " ".join(c.command or ())
    print(f"{cfg.path}: syntax and values ok")
    print(f"  queue {cfg.queue!r} on {_redact(cfg.redis.url)}")
    print(f"  consumers: {c.processes} x {work} (batch {c.batch}, decode {c.decode})")
    if p.processes:
        feed = p.source if p.source else "command " + " ".join(p.command or ())
        print(f"  producers: {p.processes} x {feed}")
    for spec in specs:
        print(f"  imported {spec}")
    return 0


def _redact(url: str) -> str:
    """A URL for display, without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="goodsd", description="A supervised pool of worker processes for a Redis list."
    )
    parser.add_argument("--version", action="version", version=f"goodsd {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help=f"config file (default: $GOODSD_CONFIG, else {config_mod.DEFAULT_PATH})",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", parents=[common], help="run the master in the foreground")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", parents=[common], help="validate config, import handler")
    check.set_defaults(func=cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"goodsd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_FAILURE
