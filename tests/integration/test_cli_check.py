"""`goodsd check` validates a config like `nginx -t`; `goodsd run` refuses a bad one with
exit 78 (EX_CONFIG), naming the key and the line, so systemd does not restart it in a loop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support import HERE

from goodsd import __version__

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
    assert result.stdout == f"goodsd {__version__}\n"
