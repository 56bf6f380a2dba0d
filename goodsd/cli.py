"""The command line: the only place that knows argv. Each subcommand is one small function."""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import grp
import json
import math
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import traceback
from collections.abc import Callable, Sequence
from typing import IO
from urllib.parse import unquote, urlsplit

from goodsd import __version__, exits, logs, metrics
from goodsd import config as config_mod
from goodsd.config import Config, ConfigError
from goodsd.exits import EXIT_CONFIG, EXIT_FAILURE, EXIT_USAGE
from goodsd.hostinfo import SETPRIV, signal_name
from goodsd.ops.common import OpsError, display_url


def load_config(args: argparse.Namespace) -> Config:
    """The config named by the command's ``-c``, else the one before the command
    (``goodsd -c FILE status``), else $GOODSD_CONFIG, else the default path."""
    given = getattr(args, "config", None) or args.global_config
    return config_mod.load(config_mod.resolve_path(given, os.environ))


def cmd_run(args: argparse.Namespace) -> int:
    """Run the master in the foreground (systemd's way), or detached with a pidfile."""
    from goodsd.master import Master
    from goodsd.notify import Notifier

    cfg = load_config(args)
    if args.detach:
        return run_detached(args, cfg)
    logs.setup(cfg.logging.level, cfg.logging.format, "master")
    return Master(cfg, Notifier()).run()


def run_detached(args: argparse.Namespace, cfg: Config) -> int:
    """Without systemd: everything that can fail fast (config, handler import, the pidfile
    lock, the log file) is checked in the foreground, so its exit code says so; then detach.
    Logs go to ``--logfile``, else to syslog."""
    import daemon

    from goodsd.master import Master
    from goodsd.notify import Notifier

    problem = import_problem(cfg)
    if problem:
        print(f"{cfg.path}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if not args.logfile and not os.path.exists(logs.SYSLOG_SOCKET):
        print(
            f"goodsd: no {logs.SYSLOG_SOCKET} to log to once detached; give --logfile PATH",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    pidfile = PidFile(args.pidfile)
    try:
        logfile = open(args.logfile, "a", buffering=1) if args.logfile else None  # noqa: SIM115
        pidfile.acquire()
    except (PidFileLocked, OSError) as exc:
        print(f"goodsd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    target = logs.STDERR if logfile else logs.SYSLOG
    context = daemon.DaemonContext(
        working_directory=os.getcwd(),  # relative paths in the config keep their meaning
        umask=0o022,
        detach_process=True,
        pidfile=pidfile,
        files_preserve=[pidfile.fd],
        stdout=logfile,
        stderr=logfile,
    )
    with context:
        logs.setup(cfg.logging.level, cfg.logging.format, "master", target=target)
        return Master(cfg, Notifier(), log_target=target).run()


class PidFileLocked(Exception):
    """Another goodsd holds the pidfile."""


class PidFile:
    """A pidfile locked (flock) for the daemon's whole life. Taken in the foreground, so a
    second instance is refused before it detaches; filled with the daemon's pid once detached
    (python-daemon enters it as a context); removed at exit. The file of a crashed run is not
    locked any more, so it is simply taken over."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.fd = -1  # open and locked once acquired

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise PidFileLocked(
                    f"already running as pid {owner} (pidfile {self.path} is locked)"
                ) from None
            try:
                ours = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                ours = False
            if ours:
                self.fd = fd
                return
            os.close(fd)  # its owner removed it as we locked it: try again with a new file

    def __enter__(self) -> PidFile:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(self.fd), os.stat(self.path)):
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1


# How long `check` (and `run --detach`, before it detaches) waits for the handler, setup and
# source to import, by default. An import that takes longer is taken for one that hangs.
IMPORT_TIMEOUT = 60.0
# Longest wait for the import probe's interpreter to start, before the import limit runs.
PROBE_START_LIMIT = 60.0

# Imports what the config names in a throwaway interpreter, so that `check` never runs user code
# in-process and sees the same sys.path a child would. Before any user code runs, it arranges to
# die with its parent (and exits if the parent is already gone). It reports on its own copy of
# stdout, one JSON object a line: each import it starts, a failure, and "done" only after every
# import succeeded; what the imported modules print goes to stderr, so it cannot pass for a
# report. An interpreter that exits without "done" (os._exit(0) in a module) did not import.
_IMPORT_PROBE = """
import json, os, signal, sys
from goodsd.hostinfo import set_parent_death_signal
set_parent_death_signal(signal.SIGKILL)
job = json.loads(sys.argv[1])
if os.getppid() != job["parent"]:
    sys.exit("goodsd check is gone")
reports = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
def report(**entry):
    reports.write(json.dumps(entry) + "\\n")
    reports.flush()
from goodsd import runner
os.close(job["started"])
runner.add_pythonpath(tuple(job["pythonpath"]))
for spec in job["specs"]:
    report(importing=spec)
    try:
        runner.load_callable(spec)
    except runner.HandlerLoadError as exc:
        report(failed=str(exc))
        sys.exit(1)
report(done=True)
"""


def import_specs(cfg: Config) -> list[str]:
    return [s for s in (cfg.consumers.handler, cfg.consumers.setup, cfg.producer.source) if s]


def import_problem(cfg: Config, timeout: float = IMPORT_TIMEOUT) -> str | None:
    """Why what the config names cannot be imported (one line), or None when it can.

    The probe gets ``timeout`` seconds; it and anything it started in its process group are
    killed when it is over, when the wait is interrupted (Ctrl-C), and after it exited.
    """
    specs = import_specs(cfg)
    if not specs:
        return None
    started_r, started_w = os.pipe()
    job = json.dumps(
        {
            "parent": os.getpid(),
            "pythonpath": cfg.pythonpath,
            "specs": specs,
            "started": started_w,
        }
    )
    with tempfile.TemporaryFile() as reports, tempfile.TemporaryFile() as errors:
        # Files, not pipes: a process the module started may keep a pipe open for ever.
        try:
            probe = subprocess.Popen(
                [sys.executable, "-c", _IMPORT_PROBE, job],
                stdin=subprocess.DEVNULL,
                stdout=reports,
                stderr=errors,
                process_group=0,
                pass_fds=(started_w,),
            )
        finally:
            os.close(started_w)
        timed_out = False
        try:
            # The limit is for the imports: it starts once the probe's interpreter is up (it
            # closes its end of the pipe then, or dies), which on a loaded host takes a while.
            try:
                select.select([started_r], [], [], PROBE_START_LIMIT)
            finally:
                os.close(started_r)
            probe.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(probe.pid, signal.SIGKILL)
            probe.wait()
        reports.seek(0)
        entries = _probe_reports(reports.read())
        return _probe_verdict(probe.returncode, entries, timed_out, timeout, _last_line(errors))


def _probe_reports(data: bytes) -> list[dict[str, object]]:
    entries = []
    for line in data.decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    return entries


def _probe_verdict(
    status: int, reports: list[dict[str, object]], timed_out: bool, timeout: float, said: str
) -> str | None:
    """What the probe's exit status and reports mean; ``said`` is its last line on stderr."""
    failed = [str(entry["failed"]) for entry in reports if "failed" in entry]
    if failed:  # "cannot load 'mod:attr': Type: message", from goodsd.runner, on one line
        return " ".join(failed[0].split())
    if status == 0 and any("done" in entry for entry in reports) and not timed_out:
        return None
    started = [str(entry["importing"]) for entry in reports if "importing" in entry]
    what = f"cannot load {started[-1]!r}" if started else "the import probe failed"
    if timed_out:
        return f"{what}: did not finish importing within {timeout:g}s"
    if status < 0:
        return f"{what}: killed by {signal_name(-status)} during import"
    detail = f": {said}" if status > 0 and said else ""
    return f"{what}: exited during import with status {status}{detail}"


def _last_line(errors: IO[bytes]) -> str:
    """The last line the probe wrote on stderr (a traceback ends with its exception), or ''."""
    errors.seek(0, os.SEEK_END)
    errors.seek(max(0, errors.tell() - 4096))
    lines = errors.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


def print_warnings(cfg: Config) -> None:
    """The config's warnings on stderr, one line each (at warning priority under journald)."""
    prefix = "<4>" if logs.under_journal(os.environ) else ""
    for warning in cfg.warnings:
        print(f"{prefix}goodsd: warning: {warning}", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config and import the handler, like `nginx -t`."""
    if args.as_user:
        return check_as_user(args)
    cfg = load_config(args)
    print_warnings(cfg)
    metrics.require_client(cfg)
    problem = (
        command_problem(cfg)
        or listen_problem(cfg)
        or socket_problem(cfg)
        or import_problem(cfg, args.import_timeout)
    )
    if problem:
        print(f"{cfg.path}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    c, p = cfg.consumers, cfg.producer
    print(f"{cfg.path}: syntax and values ok")
    print(f"  queue {cfg.queue!r} on {display_url(cfg.redis.url)}")
    if c.processes:
        work = c.handler if c.handler else "command " + " ".join(c.command or ())
        each = f", concurrency {c.concurrency}" if c.concurrency > 1 else ""
        print(f"  consumers: {c.processes} x {work} (batch {c.batch}, decode {c.decode}{each})")
    else:
        print("  consumers: none (consumers.processes is 0)")
    if p.processes:
        feed = p.source if p.source else "command " + " ".join(p.command or ())
        print(f"  producers: {p.processes} x {feed}")
    for spec in import_specs(cfg):
        print(f"  imported {spec}")
    return redis_check(cfg) if args.redis else 0


def redis_check(cfg: Config) -> int:
    """``check --redis``: connect as the service would and report on the server, one line
    each (see goodsd.deployment.report); warnings on stderr; exit 78 on any problem."""
    from goodsd.deployment import report
    from goodsd.redisconn import PasswordError, connect

    try:
        client = connect(
            cfg.redis, "goodsd-check", queue=cfg.queue, socket_timeout=5.0, lookup_budget=math.inf
        )
    except PasswordError as exc:
        print(f"{cfg.path}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        found = report(cfg, client)
    finally:
        client.close()
    if found.lines:
        print(f"redis at {display_url(cfg.redis.url)}:")
    for line in found.lines:
        print(f"  {line}")
    prefix = "<4>" if logs.under_journal(os.environ) else ""
    for warning in found.warnings:
        print(f"{prefix}goodsd: warning: {warning}", file=sys.stderr)
    for problem in found.problems:
        print(f"{cfg.path}: {problem}", file=sys.stderr)
    return EXIT_CONFIG if found.problems else 0


def command_problem(cfg: Config) -> str | None:
    """Why a configured command could not be started, or None: a program that is not there
    or not executable (found on $PATH as the child would look it up)."""
    for key, argv, wanted in (
        ("consumers.command", cfg.consumers.command, cfg.consumers.processes),
        ("producer.command", cfg.producer.command, cfg.producer.processes),
    ):
        if argv and wanted and shutil.which(argv[0]) is None:
            return f"{key}: cannot run {argv[0]!r}: not found, or not an executable file"
        if argv and wanted and shutil.which(SETPRIV) is None:
            return f"{key}: commands need {SETPRIV} (util-linux), which is not installed"
    return None


def listen_problem(cfg: Config) -> str | None:
    """Why metrics.listen could not be served, or None. Only what no waiting can fix counts:
    an address this host does not have, a name that does not resolve; a port in use (by the
    running service, most likely) is no problem of the file."""
    if cfg.metrics.listen is None:
        return None
    host, port = config_mod.parse_listen(cfg.metrics.listen)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"metrics.listen: cannot listen on {cfg.metrics.listen}: {exc.strerror or exc}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                return f"metrics.listen: cannot listen on {cfg.metrics.listen}: {exc.strerror}"
    return None


def socket_problem(cfg: Config) -> str | None:
    """For a unix:// URL: why this user may not open the socket, or None. Only a refusal
    counts: a socket that is not there now (Redis stopped) is no config problem. Nothing is
    sent to Redis."""
    parts = urlsplit(cfg.redis.url)
    if parts.scheme != "unix":
        return None
    path = unquote(parts.path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except PermissionError as exc:
            return (
                f"redis.url: cannot open the socket {path}: {exc.strerror}; the service user "
                "must be in the socket's group (e.g. SupplementaryGroups=redis)"
            )
        except OSError:
            return None
    return None


def check_as_user(args: argparse.Namespace) -> int:
    """``check`` in a child process that runs as ``--as-user`` (with its groups and any
    ``--group``), to find what only the service user trips over: a config, password file,
    pythonpath directory or socket it may not read."""
    try:
        user = pwd.getpwnam(args.as_user)
        extra = [grp.getgrnam(name).gr_gid for name in args.group]
    except KeyError as exc:
        print(f"goodsd: no such user or group: {exc.args[0]}", file=sys.stderr)
        return EXIT_USAGE
    if os.geteuid() != 0 and os.geteuid() != user.pw_uid:
        print("goodsd: check --as-user needs root", file=sys.stderr)
        return EXIT_USAGE
    # goodsd's own lazily imported modules are loaded now, as the caller: the check judges the
    # service's files, not where this interpreter lives (the import probe judges that).
    for url in ("redis://localhost/0", "unix:///run/redis.sock"):
        config_mod.parse(f"redis: {{url: '{url}'}}\nconsumers: {{processes: 0}}\n")
    if args.redis:
        import goodsd.deployment  # noqa: F401 - (see above)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = EXIT_FAILURE
        try:
            os.setgroups([*os.getgrouplist(user.pw_name, user.pw_gid), *extra])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            os.environ.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
            args.as_user = None
            code = run_command(args)
            print(f"  (checked as user {user.pw_name})")
        except OSError as exc:
            # What the user may not reach that the checks do not name themselves: the
            # interpreter the import probe runs (a venv under /root), a directory for its files
            print(f"goodsd: check as user {user.pw_name}: {os_error_text(exc)}", file=sys.stderr)
            code = EXIT_CONFIG
        except BaseException as exc:  # the child must report before os._exit, whatever it was
            print(
                f"goodsd: check as user {user.pw_name} failed: {one_line_traceback(exc)}",
                file=sys.stderr,
            )
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def os_error_text(exc: OSError) -> str:
    """An OSError as one line: its reason, and the file it concerns if it names one."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{exc.filename}: {reason}" if exc.filename is not None else reason


def one_line_traceback(exc: BaseException) -> str:
    """An unexpected exception as one line: what it was, and where it was raised (the
    innermost frame)."""
    what = "".join(traceback.format_exception_only(exc)).strip().replace("\n", " ")
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return what
    where = frames[-1]
    return f"{what} (at {where.filename}:{where.lineno} in {where.name})"


def cmd_push(args: argparse.Namespace) -> int:
    """Push items from the arguments, or one per line from stdin."""
    from goodsd.ops import push

    return push.main(load_config(args), args.items, wait_below=args.wait_below)


def cmd_status(args: argparse.Namespace) -> int:
    """Show the queue, its workers and rates (once, or --watch)."""
    from goodsd.ops import status

    return status.main(load_config(args), as_json=args.json, watch=args.watch)


def cmd_dead_list(args: argparse.Namespace) -> int:
    """List dead items, newest first."""
    from goodsd.ops import dead

    return dead.list_main(load_config(args), limit=args.limit, as_json=args.json)


def cmd_dead_requeue(args: argparse.Namespace) -> int:
    """Give dead items another run, attempts reset."""
    from goodsd.ops import dead

    if bool(args.all) == bool(args.items):
        args.parser.error("give either --all or one or more items")
    return dead.requeue_main(load_config(args), items=args.items, everything=args.all)


def cmd_dead_purge(args: argparse.Namespace) -> int:
    """Delete the dead list, after confirmation."""
    from goodsd.ops import dead

    return dead.purge_main(load_config(args), yes=args.yes)


def cmd_demo(args: argparse.Namespace) -> int:
    """A private Redis, a master and a live view, until Ctrl-C."""
    from goodsd.ops import demo

    return demo.main(consumers=args.consumers, producers=args.producers)


def _count(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0.1 and 3600 seconds, got {text}")
    return value


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps each line of a description or epilog on its own, so paragraphs and the exit code
    lists (``"  N   meaning"``, see _exit_codes) keep their lines; a code's meaning wraps under
    itself."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            code, _, meaning = line.strip().partition(" ")
            if line.startswith("  ") and code.isdigit():
                first, rest = f"{indent}  {code:<4}", indent + " " * 6
            else:
                first, rest, meaning = indent, indent, line
            lines.append(
                textwrap.fill(meaning.strip(), width, initial_indent=first, subsequent_indent=rest)
                if meaning.strip()
                else ""
            )
        return "\n".join(lines)


# Every command's --help ends with its exit codes (the man page shows the same lists).
_FORMAT = _HelpFormatter


def _exit_codes(meanings: dict[int, str]) -> str:
    """An epilog listing exit codes, one ``"  N   meaning"`` line each (see goodsd.exits)."""
    return "exit status:\n" + "\n".join(
        f"  {code:<3} {meaning}" for code, meaning in sorted(meanings.items())
    )


def add_ops_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """push, status, dead, demo: the operator's commands."""
    push = sub.add_parser(
        "push",
        parents=[common],
        help="push items (arguments, or one per line from stdin)",
        description="Push items into the ready list: the arguments, or else one item per line "
        "of stdin (line endings removed, empty lines skipped, bytes kept as they are), 10,000 "
        "per round trip, after what is already waiting. Items over 383 MiB are refused.",
        epilog=_exit_codes(exits.COMMANDS["push"]),
        formatter_class=_FORMAT,
    )
    push.add_argument("items", nargs="*", metavar="ITEM", help="items; none: read stdin lines")
    push.add_argument(
        "--wait-below",
        type=_count(1),
        metavar="N",
        help="keep the backlog at N or less, waiting for consumers as needed",
    )
    push.set_defaults(func=cmd_push)

    status = sub.add_parser(
        "status",
        parents=[common],
        help="the queue and its workers",
        description="Show the queue (backlog, in flight, retry waiting, dead), rates over one "
        "second, the fleet's counters, and every master, consumer and producer registered in "
        "Redis.",
        epilog=_exit_codes(exits.COMMANDS["status"]),
        formatter_class=_FORMAT,
    )
    status.add_argument("--json", action="store_true", help="one JSON object instead of text")
    status.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=_seconds,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C",
    )
    status.set_defaults(func=cmd_status)

    dead = sub.add_parser(
        "dead",
        help="items that used up their attempts",
        description="Look at the dead list (items that used up their retries, or could not be "
        "decoded), give its items another run, or delete it.",
        epilog=_exit_codes(exits.COMMANDS["dead"]),
        formatter_class=_FORMAT,
    )
    dead_sub = dead.add_subparsers(dest="dead_command", required=True, metavar="ACTION")
    listing = dead_sub.add_parser(
        "list",
        parents=[common],
        help="newest dead items first",
        description="List dead records, newest first: when, attempts, the item (as requeue "
        "takes it back: base64:... for any item that is not plain text) and the last error.",
        epilog=_exit_codes(exits.COMMANDS["dead list"]),
        formatter_class=_FORMAT,
    )
    listing.add_argument("--limit", type=_count(1), default=20, metavar="N", help="default 20")
    listing.add_argument("--json", action="store_true", help="one JSON object instead of text")
    listing.set_defaults(func=cmd_dead_list)
    requeue = dead_sub.add_parser(
        "requeue",
        parents=[common],
        help="back to the ready list, attempts reset",
        description="Put dead items back at the pop end of the ready list, so they run next, "
        "attempts counted from zero: every dead copy of each ITEM, or --all. Each record is "
        "removed and its item pushed in one atomic step.",
        epilog=_exit_codes(exits.COMMANDS["dead requeue"]),
        formatter_class=_FORMAT,
    )
    requeue.add_argument(
        "items", nargs="*", metavar="ITEM", help="dead items to requeue (base64:B64 = B64's bytes)"
    )
    requeue.add_argument("--all", action="store_true", help="every dead item")
    requeue.set_defaults(func=cmd_dead_requeue, parser=requeue)
    purge = dead_sub.add_parser(
        "purge",
        parents=[common],
        help="delete all dead items",
        description="Delete the dead list. Asks on a terminal; without one, refuses unless "
        "given --yes, so a script never deletes by accident.",
        epilog=_exit_codes(exits.COMMANDS["dead purge"]),
        formatter_class=_FORMAT,
    )
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(func=cmd_dead_purge)

    demo = sub.add_parser(
        "demo",
        help="watch goodsd work: private redis, producer, consumers, live view",
        description="Start a private redis-server (from PATH) in a temp dir, a goodsd master "
        "with consumers running goodsd.handlers:demo and a producer with goodsd.sources:counter, "
        "and redraw a live view until Ctrl-C, which stops everything and removes the temp dir. "
        "Reads no config file.",
        epilog=_exit_codes(exits.COMMANDS["demo"]),
        formatter_class=_FORMAT,
    )
    demo.add_argument("--consumers", type=_count(1), default=4, metavar="N", help="default 4")
    demo.add_argument(
        "--producers",
        type=_count(0),
        default=1,
        metavar="N",
        help="default 1; 0: the demo pushes items itself, as any program may",
    )
    demo.set_defaults(func=cmd_demo)


def version_text() -> str:
    """What ``goodsd --version`` prints: goodsd's version, then the redis-py (and hiredis)
    and Python it runs with, and where that Python is, since a venv or a package pins them."""
    import platform

    import redis

    try:
        import hiredis

        parser = f" with hiredis {hiredis.__version__}"
    except ImportError:
        parser = ", without hiredis"
    return (
        f"goodsd {__version__}\n"
        f"redis-py {redis.__version__}{parser}\n"
        f"Python {platform.python_version()} ({sys.executable})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="goodsd",
        description="A supervised pool of worker processes for a Redis list: consumers claim "
        "items atomically, run a handler and ack; optional producers fill the list; a master "
        "supervises them under systemd. Each command has its own --help.",
        epilog=_exit_codes(exits.MEANINGS)
        + f"\n\nconfig: -c PATH, else $GOODSD_CONFIG, else {config_mod.DEFAULT_PATH}; "
        "see goodsd(1) and goodsd.yaml(5)",
        formatter_class=_FORMAT,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=version_text(),
        help="print goodsd's version and the redis-py and Python versions it runs with",
    )
    parser.add_argument(
        "-c",
        "--config",
        dest="global_config",
        metavar="PATH",
        help="config file, for any command (a -c after the command wins)",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help=f"config file (default: $GOODSD_CONFIG, else {config_mod.DEFAULT_PATH})",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        parents=[common],
        help="run the master in the foreground",
        description="Run the master: it starts the consumers and producers the config asks "
        "for, supervises them and reports to systemd (Type=notify). In the foreground logs go "
        "to stderr; --detach daemonizes without systemd after checking the config, the "
        "imports, the pidfile and the log file. Signals: TERM/INT stop gracefully (a second "
        "one kills the children), HUP reloads the config, TTIN/TTOU add or remove a consumer.",
        epilog=_exit_codes(exits.COMMANDS["run"]),
        formatter_class=_FORMAT,
    )
    run.add_argument(
        "--detach", action="store_true", help="daemonize (without systemd); needs --pidfile"
    )
    run.add_argument("--pidfile", metavar="PATH", help="with --detach: the locked pidfile")
    run.add_argument(
        "--logfile", metavar="PATH", help="with --detach: append logs here (default: syslog)"
    )
    run.set_defaults(func=cmd_run)
    check = sub.add_parser(
        "check",
        parents=[common],
        help="validate config, import handler",
        description="Validate the config file and import the handler, setup and source it "
        "names (in a throwaway interpreter), check that commands and setpriv can be found, that "
        "the metrics address can be served and that a Redis unix socket may be opened. Prints "
        "a summary, and warnings about secrets other users can read. Without --redis it sends "
        "Redis nothing; with --redis it also connects as the service would and reports on the "
        "server: its version, deployment, eviction policy, persistence, TLS and ACL user.",
        epilog=_exit_codes(exits.COMMANDS["check"]),
        formatter_class=_FORMAT,
    )
    check.add_argument(
        "--as-user",
        metavar="USER",
        help="check as this user (root only): what the service user may not read",
    )
    check.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="GROUP",
        help="with --as-user: one more group, as SupplementaryGroups= gives (repeatable)",
    )
    check.add_argument(
        "--import-timeout",
        type=_seconds,
        default=IMPORT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up on importing handler, setup and source after SECONDS "
        f"(default {IMPORT_TIMEOUT:g})",
    )
    check.add_argument(
        "--redis",
        action="store_true",
        help="also connect to Redis as the service would and report on the server (any "
        "problem: exit 78)",
    )
    check.set_defaults(func=cmd_check)
    add_ops_commands(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.detach != bool(args.pidfile):
        parser.error("--detach and --pidfile PATH go together")
    if args.command == "run" and args.logfile and not args.detach:
        parser.error("--logfile is for --detach (in the foreground, logs go to stderr)")
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run the chosen command; its errors become one line on stderr and an exit code."""
    try:
        return int(args.func(args))
    except ConfigError as exc:
        # under journald, at error priority like the daemon's own error lines
        prefix = "<3>" if logs.under_journal(os.environ) else ""
        print(f"{prefix}goodsd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OpsError as exc:
        print(f"goodsd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except BrokenPipeError:
        # The reader went away (`goodsd status --watch | head`): no traceback, and none from
        # the interpreter flushing stdout at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
