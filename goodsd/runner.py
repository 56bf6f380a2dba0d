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
from goodsd.hostinfo import set_parent_death_signal
from goodsd.redisconn import without_secrets

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
    """bytes -> what the handler receives; raises MalformedItem with the reason.

    Whatever goes wrong while decoding is the item's fault, never the handler's: besides the
    decoders' own ValueError, bytes can make them raise RecursionError (JSON nested deeper than
    the interpreter's stack) or MemoryError. Each such item is malformed, so it goes to the dead
    list at once instead of being retried as a handler failure."""
    decode, what = _DECODERS[mode]

    def checked(raw: bytes) -> object:
        try:
            return decode(raw)
        except Exception as exc:
            raise MalformedItem(f"{what}: {_reason(exc)}") from exc

    return checked


def _reason(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, MemoryError):
        return "too large to decode"
    return str(exc)


# mode -> (bytes -> value, what a failure says the item is not)
_DECODERS: dict[str, tuple[Callable[[bytes], object], str]] = {
    "utf-8": (lambda raw: raw.decode("utf-8"), "not UTF-8"),
    "json": (json.loads, "not JSON"),
    "bytes": (lambda raw: raw, "not bytes"),
}


class CommandHandler:
    """Runs ``argv`` once per item with the raw item on stdin: exit 0 is done; anything else is
    a failure whose error is the tail of its stderr; past ``timeout`` it is killed.

    The command runs in its own process group, so a timeout also kills whatever it started
    (killing only its pid would leave a shell's children running on, unsupervised), and it
    dies with its consumer (parent-death signal), so a killed consumer leaves no command
    working on an item that is being requeued.
    """

    def __init__(
        self, argv: tuple[str, ...], timeout: float, check: Callable[[bytes], object] = bytes
    ) -> None:
        self.argv = argv
        self.timeout = timeout
        self.check = check  # raises MalformedItem for items the command must not get
        self.running: subprocess.Popen[bytes] | None = None

    def __call__(self, raw: bytes) -> None:
        self.check(raw)
        with subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=0,
            preexec_fn=_die_with_consumer,  # consumers run no threads, so this is safe
            env=without_secrets(os.environ),
        ) as proc:
            self.running = proc
            try:
                _, stderr = proc.communicate(raw, timeout=self.timeout)
            except subprocess.TimeoutExpired as exc:
                self.abort()
                proc.wait()
                raise RuntimeError(
                    f"command timed out after {self.timeout:g}s and was killed"
                ) from exc
            finally:
                self.running = None
        if proc.returncode != 0:
            tail = stderr[-STDERR_TAIL:].decode("utf-8", "replace").strip()
            how = (
                f"killed by signal {-proc.returncode}"
                if proc.returncode < 0
                else f"exit status {proc.returncode}"
            )
            raise RuntimeError(f"command failed ({how})" + (f": {tail}" if tail else ""))

    def abort(self) -> None:
        """Kill the running command and everything it started (safe from a signal handler)."""
        if self.running is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.running.pid, signal.SIGKILL)


def _die_with_consumer() -> None:
    set_parent_death_signal(signal.SIGKILL)


def build(cfg: ConsumersConfig, pythonpath: tuple[str, ...]) -> Callable[[bytes], None]:
    """The per-item function of a consumer: decode, then handle. Raises HandlerLoadError at
    build time, MalformedItem or the handler's own exception per item."""
    decode = decoder(cfg.decode)
    if cfg.command:
        return CommandHandler(cfg.command, cfg.timeout, check=decode)
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
