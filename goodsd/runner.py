"""Runs one item: decodes it as configured and hands it to a Python callable or a command.

Kept apart from the claim/ack loop so that later concurrency (threads, coroutines) can reuse it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable

from goodsd.config import ConsumersConfig

# How much of a failing command's stderr is kept as the item's error.
STDERR_TAIL = 2000


class HandlerLoadError(Exception):
    """The handler, setup or source named in the config cannot be imported."""


class MalformedItem(Exception):
    """The item cannot be decoded; retrying would not help, so it goes straight to dead."""


def add_pythonpath(paths: tuple[str, ...]) -> None:
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)


def load_callable(spec: str) -> Callable[..., object]:
    """Import ``"package.module:attr.path"`` and return the callable it names."""
    module_name, _, attr_path = spec.partition(":")
    try:
        target: object = importlib.import_module(module_name)
        for attr in attr_path.split("."):
            target = getattr(target, attr)
    except (Exception, SystemExit) as exc:  # a module may sys.exit() when it cannot start
        raise HandlerLoadError(f"cannot load {spec!r}: {type(exc).__name__}: {exc}") from exc
    if not callable(target):
        raise HandlerLoadError(f"{spec!r} is not callable")
    return target


def decoder(mode: str) -> Callable[[bytes], object]:
    """bytes -> what the handler receives; raises MalformedItem with the reason."""

    def utf8(raw: bytes) -> object:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedItem(f"not UTF-8: {exc}") from exc

    def as_json(raw: bytes) -> object:
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise MalformedItem(f"not JSON: {exc}") from exc

    return {"utf-8": utf8, "json": as_json, "bytes": lambda raw: raw}[mode]


def command_handler(argv: tuple[str, ...], timeout: float) -> Callable[[bytes], None]:
    """Run ``argv`` once per item with the raw item on stdin: exit 0 is done; anything else is a
    failure whose error is the tail of its stderr; past ``timeout`` it is killed."""

    def run(raw: bytes) -> None:
        # Its own process group, so that a timeout also kills whatever the command started:
        # killing only its pid would leave e.g. a shell's children running on, unsupervised.
        with subprocess.Popen(
            argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE, process_group=0
        ) as proc:
            try:
                _, stderr = proc.communicate(raw, timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise RuntimeError(f"command timed out after {timeout:g}s and was killed") from exc
        if proc.returncode != 0:
            tail = stderr[-STDERR_TAIL:].decode("utf-8", "replace").strip()
            how = (
                f"killed by signal {-proc.returncode}"
                if proc.returncode < 0
                else f"exit status {proc.returncode}"
            )
            raise RuntimeError(f"command failed ({how})" + (f": {tail}" if tail else ""))

    return run


def build(cfg: ConsumersConfig, pythonpath: tuple[str, ...]) -> Callable[[bytes], None]:
    """The per-item function of a consumer: decode, then handle. Raises HandlerLoadError at
    build time, MalformedItem or the handler's own exception per item."""
    decode = decoder(cfg.decode)
    if cfg.command:
        run_command = command_handler(cfg.command, cfg.timeout)

        def run_item(raw: bytes) -> None:
            decode(raw)
            run_command(raw)

        return run_item
    add_pythonpath(pythonpath)
    if not cfg.handler:
        raise HandlerLoadError("no handler or command configured")
    handler = load_callable(cfg.handler)
    if cfg.decode == "utf-8":
        return utf8_call(handler)

    def call_item(raw: bytes) -> None:
        handler(decode(raw))

    return call_item


def utf8_call(handler: Callable[[str], object]) -> Callable[[bytes], None]:
    """The common case with one call less per item: decoding inlined."""

    def call_item(raw: bytes) -> None:
        try:
            item = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedItem(f"not UTF-8: {exc}") from exc
        handler(item)

    return call_item
