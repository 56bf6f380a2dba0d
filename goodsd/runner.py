"""Runs one item: decodes it as configured and hands it to a Python callable or a command.

Kept apart from the claim/ack loop so that concurrency (threads, coroutines) can reuse it: a
command handler runs any number of items at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import inspect
import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from goodsd.config import ConsumersConfig
from goodsd.hostinfo import parent_death_command
from goodsd.output import LineRelay, log_line
from goodsd.redisconn import without_secrets

log = logging.getLogger("goodsd.setup")
# Files of goodsd itself, and of asyncio (which runs an async setup), left out of a setup
# failure's traceback.
_NOT_USER_CODE = (
    os.path.join(os.path.dirname(os.path.abspath(__file__)), ""),
    os.path.join(os.path.dirname(os.path.abspath(asyncio.__file__)), ""),
)
# How much of a failing command's stderr is kept as the item's error.
STDERR_TAIL = 2000
# Bytes moved per read or write on a command's pipes.
PIPE_CHUNK = 65536


class HandlerLoadError(Exception):
    """The handler, setup or source named in the config cannot be imported."""


class SetupFailed(Exception):
    """``consumers.setup`` raised; already logged with the user's traceback. The worker exits
    1 and is restarted with backoff (setup errors may pass: a database that is down)."""


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


def run_setup(spec: str, awaited: Callable[[Awaitable[object]], object] | None = None) -> None:
    """Call the setup function ``spec`` names; an awaitable it returns (an ``async def``
    setup) is run to completion by ``awaited``. If it raises, log it as a setup failure whose
    traceback shows the user's code only (goodsd's own frames left out), and raise
    SetupFailed; HandlerLoadError when it cannot be loaded."""
    setup = load_callable(spec)
    try:
        _finishing(awaited)(setup())
    except (Exception, SystemExit) as exc:  # a setup may sys.exit() when it cannot start
        trace = exc.__traceback__
        while trace is not None and trace.tb_frame.f_code.co_filename.startswith(_NOT_USER_CODE):
            trace = trace.tb_next
        log.error("setup %s failed", spec, exc_info=(type(exc), exc, trace))
        raise SetupFailed(spec) from None


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
    a failure whose error is the tail of its stderr; past ``timeout`` it is killed. Its stdout
    goes to ``output`` line by line (by default, into the log).

    The command's exit status decides, the moment it exits: background processes it leaves
    behind may keep its stdout or stderr open, and goodsd neither waits for them nor kills
    them (they are the command's business). The command runs in its own process group, so a
    timeout kills whatever it started too (killing only its pid would leave a shell's children
    running on, unsupervised), and it dies with its consumer (parent-death signal, set by
    setpriv before the command's own exec), so a killed consumer leaves no command working on
    an item that is being requeued.

    Calls may overlap: threads may run several items at once, each call waiting for its own
    command. Raises HandlerLoadError when setpriv is missing.
    """

    def __init__(
        self,
        argv: tuple[str, ...],
        timeout: float,
        check: Callable[[bytes], object] = bytes,
        output: Callable[[str], None] = log_line,
    ) -> None:
        self.argv = argv
        self.timeout = timeout
        self.check = check  # raises MalformedItem for items the command must not get
        self.output = output
        try:
            self.command = parent_death_command(argv, signal.SIGKILL)
        except OSError as exc:
            raise HandlerLoadError(f"cannot run commands: {exc}") from exc

    def __call__(self, raw: bytes) -> None:
        self.check(raw)
        if shutil.which(self.argv[0]) is None:  # setpriv would only exit 127 and say so
            raise FileNotFoundError(errno.ENOENT, "no such command", self.argv[0])
        with subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=0,
            env=without_secrets(os.environ),
        ) as proc:
            code, stderr = self._converse(proc, raw)
        if code != 0:
            tail = stderr.decode("utf-8", "replace").strip()
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            raise RuntimeError(f"command failed ({how})" + (f": {tail}" if tail else ""))

    def _converse(self, proc: subprocess.Popen[bytes], raw: bytes) -> tuple[int, bytes]:
        """Feed ``raw`` to stdin, pass stdout on, keep stderr's tail, until the command exits
        (its pidfd turns readable) or the timeout kills it. Returns (exit status, stderr tail).
        """
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        relay = LineRelay(self.output)
        conversation = _Conversation(proc, raw, relay)
        deadline = time.monotonic() + self.timeout
        try:
            while not conversation.exited:
                left = deadline - time.monotonic()
                if left <= 0:
                    _kill_group(proc)
                    proc.wait()
                    raise RuntimeError(f"command timed out after {self.timeout:g}s and was killed")
                conversation.step(left)
            conversation.drain()  # what it wrote before exiting; EOF may never come
        finally:
            conversation.close()
            relay.flush()
        return proc.wait(), conversation.stderr_tail


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's process group: the command and all it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


class _Conversation:
    """One command's pipes and its pidfd in one selector."""

    def __init__(self, proc: subprocess.Popen[bytes], raw: bytes, relay: LineRelay) -> None:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.relay = relay
        self.stderr_tail = b""
        self.exited = False
        self.pidfd = os.pidfd_open(proc.pid)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.pidfd, selectors.EVENT_READ, "exit")
        self.stdin = proc.stdin
        self.readers = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
        for fd, name in self.readers.items():
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ, name)
        self.unsent = memoryview(raw)
        if raw:
            os.set_blocking(self.stdin.fileno(), False)
            self.selector.register(self.stdin.fileno(), selectors.EVENT_WRITE, "stdin")
        else:
            self.stdin.close()

    def step(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            if key.data == "exit":
                self.exited = True
            elif key.data == "stdin":
                self.send()
            else:
                self.receive(key.fd, key.data)

    def send(self) -> None:
        try:
            sent = os.write(self.stdin.fileno(), self.unsent[:PIPE_CHUNK])
        except BlockingIOError:
            return
        except BrokenPipeError:  # the command does not read (all of) its item: its business
            sent = len(self.unsent)
        self.unsent = self.unsent[sent:]
        if not self.unsent:
            self.selector.unregister(self.stdin.fileno())
            with contextlib.suppress(BrokenPipeError):
                self.stdin.close()

    def receive(self, fd: int, name: str) -> bool:
        """Read what the pipe holds now; False once it is closed or empty."""
        try:
            chunk = os.read(fd, PIPE_CHUNK)
        except BlockingIOError:
            return False
        if not chunk:
            self.selector.unregister(fd)
            del self.readers[fd]
            return False
        if name == "stdout":
            self.relay.feed(chunk)
        else:
            self.stderr_tail = (self.stderr_tail + chunk)[-STDERR_TAIL:]
        return True

    def drain(self) -> None:
        for fd, name in list(self.readers.items()):
            while self.receive(fd, name):
                pass

    def close(self) -> None:
        self.selector.close()
        os.close(self.pidfd)
        with contextlib.suppress(BrokenPipeError):
            self.stdin.close()


def build(
    cfg: ConsumersConfig,
    pythonpath: tuple[str, ...],
    awaited: Callable[[Awaitable[object]], object] | None = None,
) -> Callable[[bytes], None]:
    """The per-item function of a consumer: decode, then handle. A handler that returns an
    awaitable (an ``async def`` one, say) has it run to completion by ``awaited`` (on the
    process's event loop); without ``awaited``, that is a TypeError. Raises HandlerLoadError at
    build time, MalformedItem or the handler's own exception per item."""
    decode = decoder(cfg.decode)
    if cfg.command:
        return CommandHandler(cfg.command, cfg.timeout, check=decode)
    handler = load_handler(cfg, pythonpath)
    finish = _finishing(awaited)
    if cfg.decode == "utf-8":
        return utf8_call(handler, finish)

    def call_item(raw: bytes) -> None:
        result = handler(decode(raw))
        if result is not None:
            finish(result)

    return call_item


def build_async(
    cfg: ConsumersConfig, pythonpath: tuple[str, ...]
) -> Callable[[bytes], Awaitable[object]] | None:
    """For an async handler (``async def``, or an object with an ``async def __call__``): the
    per-item function that decodes the item and returns the handler's coroutine, to be
    awaited (no coroutine of its own: one less per item). None for any other handler: a
    command, or a plain function (run in threads; see ``build``). Raises as ``build`` does."""
    if cfg.command:
        return None
    handler = load_handler(cfg, pythonpath)
    if not is_async(handler):
        return None
    decode = decoder(cfg.decode)

    def call_item(raw: bytes) -> Awaitable[object]:
        return handler(decode(raw))  # type: ignore[return-value]  # a coroutine (is_async)

    return call_item


def load_handler(cfg: ConsumersConfig, pythonpath: tuple[str, ...]) -> Callable[..., object]:
    """The configured Python handler, with ``pythonpath`` in front of sys.path."""
    add_pythonpath(pythonpath)
    if not cfg.handler:
        raise HandlerLoadError("no handler or command configured")
    return load_callable(cfg.handler)


def is_async(handler: Callable[..., object]) -> bool:
    """Whether calling ``handler`` makes a coroutine: an ``async def`` function (or a partial
    of one), or an object whose class has an ``async def __call__``."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        type(handler).__call__
    )


def _finishing(
    awaited: Callable[[Awaitable[object]], object] | None,
) -> Callable[[object], None]:
    """What becomes of a handler's result other than None: an awaitable is run to completion
    by ``awaited`` (a TypeError without one); anything else is ignored, as ever."""

    def finish(result: object) -> None:
        if inspect.isawaitable(result):
            if awaited is None:
                if inspect.iscoroutine(result):
                    result.close()  # not run: no "never awaited" warning for it
                raise TypeError("the handler returned an awaitable, and nothing here runs one")
            awaited(result)

    return finish


def utf8_call(
    handler: Callable[[str], object], finish: Callable[[object], None]
) -> Callable[[bytes], None]:
    """The common case with one call less per item: decoding inlined. A result other than
    None goes to ``finish``."""

    def call_item(raw: bytes) -> None:
        try:
            item = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedItem(f"not UTF-8: {exc}") from exc
        result = handler(item)
        if result is not None:
            finish(result)

    return call_item
