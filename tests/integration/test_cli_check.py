"""`goodsd check` validates a config like `nginx -t`; `goodsd run` refuses a bad one with
exit 78 (EX_CONFIG), naming the key and the line, so systemd does not restart it in a loop."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import redis
from support import HERE, wait_for

from goodsd import __version__
from goodsd.hostinfo import process_start

EX_CONFIG = 78


def goodsd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("GOODSD_CONFIG", "NOTIFY_SOCKET")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "goodsd", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=30,
        check=False,
    )


def config_file(tmp_path: Path, consumers: str, name: str = "goodsd.yaml") -> Path:
    """A config whose ``consumers`` section starts on line 5 (keys on line 6 on)."""
    path = tmp_path / name
    path.write_text(
        "redis:\n"
        "  url: unix:///run/goodsd-test/redis.sock\n"
        "queue: goods2\n"
        f"pythonpath: [{HERE}]\n"
        "consumers:\n" + consumers
    )
    return path


GOOD = "  processes: 3\n  handler: sample_handlers:record\n  batch: 25\n"
TYPO = "  handler: sample_handlers:record\n  procesess: 2\n"


def test_check_accepts_a_good_config_and_says_what_it_checked(tmp_path: Path) -> None:
    # Given a valid config whose handler imports
    path = config_file(tmp_path, GOOD)
    # When it is checked
    result = goodsd("check", "-c", str(path))
    # Then it exits 0 and shows what it read and imported
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{path}: syntax and values ok",
        "  queue 'goods2' on unix:///run/goodsd-test/redis.sock",
        "  consumers: 3 x sample_handlers:record (batch 25, decode utf-8)",
        "  imported sample_handlers:record",
    ]
    assert result.stderr == ""


def test_check_names_the_line_and_key_of_a_typo(tmp_path: Path) -> None:
    # Given a misspelt key on line 7
    path = config_file(tmp_path, TYPO)
    # When it is checked
    result = goodsd("check", "-c", str(path))
    # Then it exits 78 and points at the key, with a suggestion
    assert result.returncode == EX_CONFIG
    assert result.stderr == (
        f"goodsd: {path}:7: consumers.procesess: unknown key (did you mean processes?)\n"
    )
    assert result.stdout == ""


def test_check_names_a_handler_that_cannot_be_imported(tmp_path: Path) -> None:
    # Given a config whose handler module does not exist
    path = config_file(tmp_path, "  handler: no_such_module_xyz:handle\n")
    # When it is checked
    result = goodsd("check", "-c", str(path))
    # Then it exits 78 and names the handler and why
    assert result.returncode == EX_CONFIG
    assert "'no_such_module_xyz:handle'" in result.stderr
    assert "ModuleNotFoundError" in result.stderr
    assert result.stderr.startswith(f"{path}: ")


def test_an_import_error_is_told_on_one_line(tmp_path: Path) -> None:
    # Given a handler module that raises an exception whose message spans lines
    (tmp_path / "multiline_mod.py").write_text("raise RuntimeError('first\\nsecond')\n")
    path = tmp_path / "goodsd.yaml"
    path.write_text(f"pythonpath: [{tmp_path}]\nconsumers:\n  handler: multiline_mod:handle\n")
    # When it is checked
    result = goodsd("check", "-c", str(path))
    # Then the reason is one line
    assert result.returncode == EX_CONFIG
    assert result.stderr == (
        f"{path}: cannot load 'multiline_mod:handle': RuntimeError: first second\n"
    )


def test_check_names_a_handler_whose_import_exits(tmp_path: Path) -> None:
    # Given a handler module that calls sys.exit() while being imported
    (tmp_path / "loud_import_mod.py").write_text("import sys\nsys.exit('import refused')\n")
    path = tmp_path / "goodsd.yaml"
    path.write_text(f"pythonpath: [{tmp_path}]\nconsumers:\n  handler: loud_import_mod:handle\n")
    # When it is checked
    result = goodsd("check", "-c", str(path))
    # Then that is a handler that cannot load: exit 78, naming it and its reason
    assert result.returncode == EX_CONFIG
    assert result.stderr.startswith(f"{path}: ")
    assert "cannot load 'loud_import_mod:handle': SystemExit: import refused" in result.stderr


def test_run_refuses_a_bad_config_naming_key_and_line(tmp_path: Path) -> None:
    # Given a config with a misspelt key
    path = config_file(tmp_path, TYPO)
    # When goodsd is started with it
    result = goodsd("run", "-c", str(path))
    # Then it exits 78 at once, before starting anything, naming the key and line
    assert result.returncode == EX_CONFIG
    assert f"{path}:7: consumers.procesess: unknown key (did you mean processes?)" in (
        result.stderr
    )


def test_run_with_a_handler_that_cannot_load_exits_78(tmp_path: Path, redis_server) -> None:
    # Given a valid config (reachable Redis) whose handler cannot be imported
    path = tmp_path / "goodsd.yaml"
    path.write_text(
        f"redis: {{url: '{redis_server.url}'}}\n"
        "queue: q\n"
        "consumers: {processes: 2, handler: 'no_such_module_xyz:handle'}\n"
        "supervisor: {restart_delay: 200ms, graceful_timeout: 5s}\n"
    )
    # When goodsd is started with it
    result = goodsd("run", "-c", str(path))
    # Then it gives up with 78 instead of restarting children forever, naming the handler
    assert result.returncode == EX_CONFIG, result.stderr[-2000:]
    assert "'no_such_module_xyz:handle'" in result.stderr


def test_config_path_comes_from_goodsd_config_without_c(tmp_path: Path) -> None:
    # Given a good and a bad config, named only by $GOODSD_CONFIG
    good = config_file(tmp_path, GOOD)
    bad = config_file(tmp_path, TYPO, name="bad.yaml")
    # Then check reads the file the variable names
    result = goodsd("check", env={"GOODSD_CONFIG": str(good)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{good}: syntax and values ok")
    result = goodsd("check", env={"GOODSD_CONFIG": str(bad)})
    assert result.returncode == EX_CONFIG
    assert f"{bad}:7: consumers.procesess" in result.stderr
    # And -c wins over the variable
    result = goodsd("check", "-c", str(good), env={"GOODSD_CONFIG": str(bad)})
    assert result.returncode == 0, result.stderr


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = goodsd("check", "-c", str(missing))
    assert result.returncode == EX_CONFIG
    assert result.stderr == f"goodsd: {missing}: cannot read: No such file or directory\n"


def test_version() -> None:
    result = goodsd("--version")
    assert result.returncode == 0
    # Then the first line is goodsd's version, the others what it runs with: redis-py (and
    # hiredis, when there) and the Python interpreter, with its path
    lines = result.stdout.splitlines()
    assert lines[0] == f"goodsd {__version__}"
    assert lines[1].startswith(f"redis-py {redis.__version__}")
    assert lines[2] == f"Python {platform.python_version()} ({sys.executable})"
    assert len(lines) == 3


# --- imports that hang, exit or never finish ---------------------------------------------------


def module_config(tmp_path: Path, module: str, source: str) -> Path:
    """A config whose handler is ``module:handle``, a module with ``source`` as its body."""
    (tmp_path / f"{module}.py").write_text(source)
    path = tmp_path / "goodsd.yaml"
    path.write_text(f"pythonpath: [{tmp_path}]\nconsumers:\n  handler: {module}:handle\n")
    return path


def blocking_module(tmp_path: Path) -> tuple[Path, Path]:
    """A handler module that writes the pid of the interpreter importing it, then blocks."""
    pid_file = tmp_path / "probe.pid"
    source = (
        "import os, threading\n"
        f"with open({str(pid_file)!r}, 'w') as f:\n"
        "    f.write(str(os.getpid()))\n"
        "threading.Event().wait()\n"
    )
    return module_config(tmp_path, "blocking_import_mod", source), pid_file


def gone(pid: int) -> bool:
    return process_start(pid) is None


def test_check_gives_up_on_an_import_that_blocks(tmp_path: Path) -> None:
    # Given a handler module that blocks while it is imported
    path, pid_file = blocking_module(tmp_path)
    # When it is checked with a 2 s import limit
    result = goodsd("check", "--import-timeout", "2", "-c", str(path))
    # Then check exits 78 naming the module and the limit, and leaves no probe running
    assert result.returncode == EX_CONFIG, result.stderr
    assert result.stderr == (
        f"{path}: cannot load 'blocking_import_mod:handle': did not finish importing within 2s\n"
    )
    probe = int(pid_file.read_text())
    wait_for(lambda: gone(probe), 5, f"the import probe {probe} to be gone")


def test_a_killed_check_takes_its_probe_with_it(tmp_path: Path) -> None:
    # Given `check` waiting on a probe whose import blocks
    path, pid_file = blocking_module(tmp_path)
    check = subprocess.Popen(
        [sys.executable, "-m", "goodsd", "check", "-c", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text(), 10, "the probe's pid")
        probe = int(pid_file.read_text())
        # When check is killed outright (no chance to clean up)
        check.kill()
        check.wait(5)
        # Then its probe dies too
        wait_for(lambda: gone(probe), 5, f"the import probe {probe} to die with check")
    finally:
        check.kill()
        check.wait()


def test_check_refuses_a_module_that_exits_0_while_imported(tmp_path: Path) -> None:
    # Given a handler module that ends its interpreter with status 0 while imported
    path = module_config(tmp_path, "exit0_import_mod", "import os\nos._exit(0)\n")
    # When it is checked
    result = goodsd("check", "-c", str(path))
    # Then the early exit is caught: a child would exit the same way, and be restarted forever
    assert result.returncode == EX_CONFIG, result.stdout
    assert result.stderr == (
        f"{path}: cannot load 'exit0_import_mod:handle': exited during import with status 0\n"
    )


def test_check_names_a_module_that_kills_itself(tmp_path: Path) -> None:
    path = module_config(
        tmp_path, "segv_import_mod", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"
    )
    result = goodsd("check", "-c", str(path))
    assert result.returncode == EX_CONFIG
    assert result.stderr == (
        f"{path}: cannot load 'segv_import_mod:handle': killed by SIGSEGV during import\n"
    )


def test_check_is_not_fooled_by_what_a_module_prints(tmp_path: Path) -> None:
    # Given a module that prints, on stdout and stderr, then exits 0 during its import
    source = (
        "import os, sys\nprint('done')\nprint('{\"done\": true}', file=sys.stderr)\nos._exit(0)\n"
    )
    path = module_config(tmp_path, "chatty_import_mod", source)
    # Then nothing it printed passes for a finished import
    result = goodsd("check", "-c", str(path))
    assert result.returncode == EX_CONFIG
    assert "exited during import with status 0" in result.stderr


def test_check_imports_with_several_pythonpath_entries(tmp_path: Path) -> None:
    # Given a handler found in the second of two pythonpath directories
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "second_dir_mod.py").write_text("def handle(item):\n    pass\n")
    path = tmp_path / "goodsd.yaml"
    path.write_text(
        f"pythonpath: [{tmp_path / 'nothing'}, {tmp_path / 'lib'}]\n"
        "consumers:\n  handler: second_dir_mod:handle\n"
    )
    # Then check finds it, as a child would
    result = goodsd("check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "  imported second_dir_mod:handle" in result.stdout


# --- files that are no config, and configs `run` would refuse -----------------------------------


def test_check_refuses_a_device_at_once() -> None:
    result = goodsd("check", "-c", "/dev/zero")
    assert result.returncode == EX_CONFIG
    assert (
        result.stderr == "goodsd: /dev/zero: cannot read: a character device, not a regular file\n"
    )


def test_check_run_and_status_refuse_a_fifo_without_blocking(tmp_path: Path) -> None:
    # Given a FIFO where the config should be, with no writer
    fifo = tmp_path / "goodsd.yaml"
    os.mkfifo(fifo)
    for command in ("check", "run", "status"):
        # When a command reads it
        result = goodsd(command, "-c", str(fifo))
        # Then it is refused at once, not waited on
        assert result.returncode == EX_CONFIG, command
        assert result.stderr == f"goodsd: {fifo}: cannot read: a FIFO, not a regular file\n"


def test_check_run_and_status_refuse_deep_nesting_in_one_line(tmp_path: Path) -> None:
    # Given the example: `queue:` followed by 300 nested [ ... ]
    path = tmp_path / "goodsd.yaml"
    path.write_text("consumers:\n  handler: a:b\nqueue: " + "[" * 300 + "]" * 300 + "\n")
    for command in ("check", "run", "status"):
        # When a command reads it
        result = goodsd(command, "-c", str(path))
        # Then it exits 78 with one line, no traceback
        assert result.returncode == EX_CONFIG, command
        assert result.stderr == f"goodsd: {path}:3: queue: nested deeper than 32 levels\n"


def test_check_refuses_a_missing_password_file(tmp_path: Path) -> None:
    # Given the example: a password file that is not there
    path = tmp_path / "goodsd.yaml"
    path.write_text(
        "redis:\n"
        "  url: unix:///run/goodsd-test/redis.sock\n"
        "  password_file: /nonexistent\n"
        "consumers:\n  handler: goodsd.handlers:log\n"
    )
    # When it is checked
    result = goodsd("check", "-c", str(path))
    # Then check refuses it as `run` would, at its line
    assert result.returncode == EX_CONFIG
    assert result.stderr == (
        f"goodsd: {path}:3: redis.password_file: "
        "cannot read /nonexistent: No such file or directory\n"
    )


def test_check_refuses_a_huge_lease(tmp_path: Path) -> None:
    path = tmp_path / "goodsd.yaml"
    path.write_text(
        "consumers:\n  handler: goodsd.handlers:log\n"
        "supervisor:\n  lease: 99999999999999999999999999d\n"
    )
    result = goodsd("check", "-c", str(path))
    assert result.returncode == EX_CONFIG
    assert result.stderr == (
        f"goodsd: {path}:4: supervisor.lease: must be at most 1d, got 8.64e+30s\n"
    )


def test_check_warns_about_a_password_others_can_read(tmp_path: Path) -> None:
    # Given a config every user can read, with a password in its URL
    path = tmp_path / "goodsd.yaml"
    path.write_text(
        "redis:\n  url: 'redis://alice:p@ss@127.0.0.1:6379/0'\n"
        "consumers:\n  handler: goodsd.handlers:log\n"
    )
    path.chmod(0o644)
    # When it is checked
    result = goodsd("check", "-c", str(path))
    # Then it passes with a warning naming the fix, and shows the URL without its user info
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"goodsd: warning: {path} holds a Redis password in redis.url and can be read by every "
        f"user on this host; restrict it: chmod 0640 {path}; chown root:goodsd {path}\n"
    )
    assert "  queue 'goods2' on redis://***@127.0.0.1:6379/0" in result.stdout.splitlines()
    assert "p@ss" not in result.stdout + result.stderr
