"""`config.load`: what it reads (regular files only, up to a size limit), the files the config
names (the password file) and the warnings about who else can read a secret.

Every refusal is a ConfigError, so `check`, `run`, a reload and the ops commands all exit 78
with one line instead of a traceback, a hang or a MemoryError.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from goodsd import config
from goodsd.config import ConfigError

MINIMAL = "consumers:\n  handler: app.tasks:handle\n"


def load_error(path: Path | str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        config.load(str(path))
    return caught.value


def write(path: Path, text: str, mode: int = 0o640) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# --- what is read ------------------------------------------------------------------------------


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    # Given a FIFO at the config path, with no writer
    fifo = tmp_path / "goodsd.yaml"
    os.mkfifo(fifo)
    # When it is loaded (in a thread, so a regression fails the test instead of hanging it)
    outcome: list[BaseException] = []
    reader = threading.Thread(target=lambda: outcome.append(load_error(fifo)), daemon=True)
    reader.start()
    reader.join(timeout=5)
    # Then it is refused at once as not a regular file
    assert not reader.is_alive(), "config.load blocked on a FIFO"
    assert str(outcome[0]) == f"{fifo}: cannot read: a FIFO, not a regular file"


@pytest.mark.parametrize(
    ("device", "kind"), [("/dev/zero", "a character device"), ("/dev/null", "a character device")]
)
def test_a_device_is_refused(device: str, kind: str) -> None:
    # Given a device that would give endless (or no) bytes
    # When it is loaded
    started = time.monotonic()
    err = load_error(device)
    # Then it is refused at once, without reading it
    assert str(err) == f"{device}: cannot read: {kind}, not a regular file"
    assert time.monotonic() - started < 1


def test_a_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    # Given a file one byte over the limit (valid YAML: a long comment)
    path = tmp_path / "goodsd.yaml"
    path.write_text(MINIMAL + "#" * (config.MAX_FILE_BYTES - len(MINIMAL)) + "\n")
    assert path.stat().st_size == config.MAX_FILE_BYTES + 1
    # When it is loaded
    err = load_error(path)
    # Then it is refused by its size
    assert str(err) == f"{path}: cannot read: larger than 1 MiB; is this the right file?"


def test_a_file_at_the_size_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "goodsd.yaml"
    path.write_text(MINIMAL + "#" * (config.MAX_FILE_BYTES - len(MINIMAL) - 1) + "\n")
    assert path.stat().st_size == config.MAX_FILE_BYTES
    assert config.load(str(path)).consumers.handler == "app.tasks:handle"


def test_a_file_that_grows_past_the_limit_while_read_is_refused(tmp_path: Path) -> None:
    # Given a file whose size says small, but that yields more (as /proc files do)
    fd = os.open("/proc/self/maps", os.O_RDONLY)
    assert os.fstat(fd).st_size == 0
    # When the reader is asked for a file of the limit and one byte more
    try:
        data = config._read_limited(fd, limit=10)
    finally:
        os.close(fd)
    # Then it stops at limit + 1 bytes, so the caller can tell it is too big
    assert len(data) == 11


# --- the password file -------------------------------------------------------------------------


def test_a_missing_password_file_is_refused_at_its_line(tmp_path: Path) -> None:
    # Given a config naming a password file that does not exist (the example)
    path = write(tmp_path / "goodsd.yaml", MINIMAL + "redis:\n  password_file: /nonexistent\n")
    # When it is loaded
    err = load_error(path)
    # Then the key and its line are named, as `run` would fail on it
    assert str(err) == (
        f"{path}:4: redis.password_file: cannot read /nonexistent: No such file or directory"
    )


def test_a_password_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "goodsd.yaml", MINIMAL + f"redis:\n  password_file: {tmp_path}\n")
    err = load_error(path)
    assert str(err) == (
        f"{path}:4: redis.password_file: cannot read {tmp_path}: a directory, not a regular file"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_password_file_is_refused(tmp_path: Path) -> None:
    secret = write(tmp_path / "pw", "hunter2\n", mode=0o000)
    path = write(tmp_path / "goodsd.yaml", MINIMAL + f"redis:\n  password_file: {secret}\n")
    err = load_error(path)
    assert str(err) == f"{path}:4: redis.password_file: cannot read {secret}: Permission denied"


def test_a_readable_password_file_passes_without_warning(tmp_path: Path) -> None:
    secret = write(tmp_path / "pw", "hunter2\n", mode=0o640)
    path = write(tmp_path / "goodsd.yaml", MINIMAL + f"redis:\n  password_file: {secret}\n")
    cfg = config.load(str(path))
    assert cfg.redis.password_file == str(secret)
    assert cfg.warnings == ()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\xff\xfe not text\n", "not UTF-8 text"),
        (b" \n\n", "empty"),
        (b"x" * (config.MAX_PASSWORD_BYTES + 1), "larger than 4096 bytes: not a password file"),
    ],
)
def test_a_password_file_goodsd_could_not_use_is_refused(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    # Given a password file every goodsd process would fail to use at its start
    secret = tmp_path / "pw"
    secret.write_bytes(content)
    path = write(tmp_path / "goodsd.yaml", MINIMAL + f"redis:\n  password_file: {secret}\n")
    # Then loading the config (check, run, a reload) refuses it, saying why
    assert str(load_error(path)) == f"{path}:4: redis.password_file: {secret}: {problem}"


# --- warnings: secrets other users can read ----------------------------------------------------


def test_a_password_file_readable_by_everyone_gives_a_warning(tmp_path: Path) -> None:
    # Given a password file every user may read
    secret = write(tmp_path / "pw", "hunter2\n", mode=0o644)
    path = write(tmp_path / "goodsd.yaml", MINIMAL + f"redis:\n  password_file: {secret}\n")
    # When the config is loaded
    cfg = config.load(str(path))
    # Then it loads, with one warning naming the file and the fix
    assert cfg.warnings == (
        f"redis.password_file {secret} can be read by every user on this host; "
        f"restrict it: chmod 0640 {secret}; chown root:goodsd {secret}",
    )
    assert "hunter2" not in cfg.warnings[0]


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@127.0.0.1:6379/0",
        "redis://alice:hunter2@127.0.0.1:6379/0",
        "unix:///run/redis.sock?password=hunter2",
        "rediss://h:6380/0?ssl_password=hunter2",
    ],
)
def test_a_world_readable_config_with_a_url_password_gives_a_warning(
    tmp_path: Path, url: str
) -> None:
    # Given a config file every user may read, whose redis.url holds a password
    path = write(tmp_path / "goodsd.yaml", MINIMAL + f"redis:\n  url: '{url}'\n", mode=0o644)
    # When it is loaded
    cfg = config.load(str(path))
    # Then it loads, with a warning that names the file and the fix, not the password
    assert cfg.warnings == (
        f"{path} holds a Redis password in redis.url and can be read by every user on this "
        f"host; restrict it: chmod 0640 {path}; chown root:goodsd {path}",
    )
    assert "hunter2" not in cfg.warnings[0]


@pytest.mark.parametrize(
    ("url", "mode"),
    [
        ("redis://:hunter2@127.0.0.1:6379/0", 0o640),  # not readable by others
        ("redis://alice@127.0.0.1:6379/0", 0o644),  # a user name is no secret
        ("redis://127.0.0.1:6379/0?db=2", 0o644),
    ],
)
def test_no_warning_without_an_exposed_password(tmp_path: Path, url: str, mode: int) -> None:
    path = write(tmp_path / "goodsd.yaml", MINIMAL + f"redis:\n  url: '{url}'\n", mode=mode)
    assert config.load(str(path)).warnings == ()


def test_paths_in_warnings_are_quoted_for_the_shell(tmp_path: Path) -> None:
    # Given a password file whose name has a space
    secret = write(tmp_path / "my pw", "hunter2\n", mode=0o604)
    path = write(tmp_path / "goodsd.yaml", MINIMAL + f"redis:\n  password_file: '{secret}'\n")
    # Then the fix can be pasted as it is
    (warning,) = config.load(str(path)).warnings
    assert warning.endswith(f"chmod 0640 '{secret}'; chown root:goodsd '{secret}'")
