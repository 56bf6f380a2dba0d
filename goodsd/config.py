"""YAML config -> frozen dataclasses.

This is the only module that knows YAML. Everything else receives a frozen `Config`, so a
child process holds an immutable snapshot and a reload can compare old and new by value.

Validation is strict because a typo in a daemon's config should stop it at start (or keep the
old config on reload) instead of silently running with a default. Each error names the file,
the line and the dotted key, so `goodsd check` points straight at the mistake.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import math
import os
import re
import shlex
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

import redis
import yaml
from redis.connection import URL_QUERY_ARGUMENT_PARSERS, Connection, SSLConnection
from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    Event,
    MappingStartEvent,
    ScalarEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.reader import ReaderError
from yaml.tokens import ScalarToken

from goodsd import redisurl
from goodsd.redisurl import Deployment

DEFAULT_PATH = "/etc/goodsd.yaml"
# The largest config file read. A full goodsd config is a few KiB; the limit keeps a wrong path
# (a log, a dump) from stalling `check` or the master's loop on a reload for many seconds.
MAX_FILE_BYTES = 1 << 20
# Largest password file goodsd reads (a password is far shorter; a larger file is a mistake).
MAX_PASSWORD_BYTES = 4096
# The deepest nesting read, the top-level mapping being level 1; goodsd's own keys need 3.
# PyYAML composes and constructs recursively, so depth is refused before it is composed.
MAX_DEPTH = 32
# The most values a file may hold, aliases counted as what they stand for. A goodsd config
# holds about 50. PyYAML takes some 30 us a value, so this keeps a parse (which a reload runs in
# the master's loop) well under a second, and it stops alias bombs: PyYAML copies merged keys
# (`<<: [*a, *a]`), so a few lines of aliases could otherwise stand for billions of values.
MAX_VALUES = 10_000


class ConfigError(Exception):
    """A config problem, told as one line: `<path>:<line>: <key>: <reason>`.

    The parts are kept as attributes so callers (the reload path, `goodsd check`) can show them
    elsewhere, e.g. in the systemd STATUS= line.
    """

    def __init__(self, path: str, line: int | None, key: str, reason: str) -> None:
        super().__init__(path, line, key, reason)
        self.path = path  # the file as given on the command line or in the environment
        self.line = line  # 1-based line, or None when no single line is to blame
        self.key = key  # dotted key path, e.g. "consumers.batch"; "" for the whole file
        self.reason = reason  # what is wrong, without the location

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.key}: {self.reason}" if self.key else f"{where}: {self.reason}"


@dataclass(frozen=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    password_file: str | None = None
    # Sentinel's own login, apart from the data nodes' (only with a redis+sentinel:// URL)
    sentinel_username: str | None = None
    sentinel_password_file: str | None = None
    # replicas that must acknowledge a push or a settle before it counts (WAIT); 0: none
    wait_replicas: int = 0


@dataclass(frozen=True)
class ConsumersConfig:
    processes: int = 4
    handler: str | None = None
    command: tuple[str, ...] | None = None
    setup: str | None = None
    batch: int = 10
    timeout: float = 30.0
    retries: int = 3
    retry_delay: float = 5.0
    max_items: int = 0
    decode: str = "utf-8"
    concurrency: int = 1


@dataclass(frozen=True)
class ProducerConfig:
    processes: int = 0
    source: str | None = None
    command: tuple[str, ...] | None = None
    high_watermark: int = 10000
    low_watermark: int = 8000
    singleton: bool = False
    batch: int = 100


@dataclass(frozen=True)
class SupervisorConfig:
    graceful_timeout: float = 30.0
    restart_delay: float = 1.0
    restart_delay_max: float = 60.0
    lease: float = 30.0


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True)
class MetricsConfig:
    listen: str | None = None


@dataclass(frozen=True)
class Config:
    redis: RedisConfig = field(default_factory=RedisConfig)
    queue: str = "goods2"
    pythonpath: tuple[str, ...] = ()
    consumers: ConsumersConfig = field(default_factory=ConsumersConfig)
    producer: ProducerConfig = field(default_factory=ProducerConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    path: str = ""  # the file it was read from, for messages; not a YAML key
    # Line of each key the file sets, by dotted key ("consumers.batch" -> 12), so checks made
    # after parsing can blame a line. Not part of the config's value.
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False, repr=False)
    # Problems that do not stop goodsd (a secret other users can read), each a full sentence
    # naming the file and the fix. Set by `load`; not part of the config's value.
    warnings: tuple[str, ...] = field(default=(), compare=False)


def resolve_path(cli_path: str | None, environ: Mapping[str, str]) -> str:
    """-c PATH, else $GOODSD_CONFIG, else /etc/goodsd.yaml; empty values count as unset."""
    return cli_path or environ.get("GOODSD_CONFIG") or DEFAULT_PATH


def load(path: str) -> Config:
    """Read ``path``, validate it, and check the files it names, as `run` will use them.

    Only a regular file of at most MAX_FILE_BYTES is read, and opening never blocks (a FIFO or a
    device at the path is refused, not waited on). Raises ConfigError for anything `run` would
    refuse; what does not stop goodsd (a password other users can read) is returned in
    ``Config.warnings``.
    """
    try:
        data, mode = _read_config_file(path)
    except OSError as err:
        raise ConfigError(path, None, "", f"cannot read: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(path, None, "", f"not UTF-8 text (byte {err.start})") from None
    cfg = parse(text, path)
    warnings = (*_password_file_warnings(cfg), *_url_password_warnings(cfg, mode))
    return dataclasses.replace(cfg, warnings=warnings)


def parse(text: str, path: str = "<string>") -> Config:
    """Validate YAML text into a Config; every check lives here so `check` and `run` agree.

    Raises ConfigError, and nothing else, whatever the text.
    """
    try:
        loader = _Loader(text, path)
    except ReaderError as err:  # a character YAML does not allow, e.g. NUL
        line = text.count("\n", 0, err.position) + 1
        reason = f"invalid YAML: character #x{err.character:04x}: {err.reason}"
        raise ConfigError(path, line, "", reason) from None
    try:
        return _Builder(path, loader).build(loader.get_single_node())
    except yaml.MarkedYAMLError as err:
        raise _syntax_error(err, loader.last_plain, text, path) from None
    except (RecursionError, MemoryError):
        # The limits on depth and aliases keep PyYAML's recursion and copying small; this is
        # the last line, so that a shape they miss still ends as one line and exit 78.
        raise ConfigError(path, None, "", "too deeply nested or too large to read") from None
    finally:
        loader.dispose()


def dump(data: Mapping[str, object]) -> str:
    """A config mapping as YAML text that ``parse`` reads back, keys in the given order. For
    programs that write a config (the demo, benchmarks), so only this module knows YAML."""
    return yaml.safe_dump(dict(data), sort_keys=False)


# --- files -----------------------------------------------------------------------------------


class _NotRegularFile(OSError):
    """A path that is there but is no regular file: reading it could block or never end."""

    def __init__(self, mode: int) -> None:
        super().__init__(errno.EINVAL, f"{_file_kind(mode)}, not a regular file")


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a file")


def _open_regular(path: str) -> tuple[int, os.stat_result]:
    """A descriptor for reading ``path`` and its stat. O_NONBLOCK, so a FIFO without a writer
    is refused instead of waited on; raises OSError (_NotRegularFile for anything but a
    regular file)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _NotRegularFile(info.st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _read_limited(fd: int, limit: int) -> bytes:
    """At most ``limit + 1`` bytes from ``fd``: one byte more than allowed tells a file over
    the limit, even one whose size lies (files in /proc say 0)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = os.read(fd, limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _read_config_file(path: str) -> tuple[bytes, int]:
    """The bytes of the config file and its mode; raises OSError with the reason."""
    too_big = OSError(errno.EFBIG, "larger than 1 MiB; is this the right file?")
    fd, info = _open_regular(path)
    try:
        if info.st_size > MAX_FILE_BYTES:
            raise too_big
        data = _read_limited(fd, MAX_FILE_BYTES)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise too_big
    return data, info.st_mode


def _restrict(path: str) -> str:
    """The commands that give a secret file the modes the README asks for."""
    quoted = shlex.quote(path)
    return f"restrict it: chmod 0640 {quoted}; chown root:goodsd {quoted}"


class PasswordFileError(Exception):
    """A password file goodsd cannot use; the message names the file and why."""


def read_password_file(path: str) -> tuple[str, int]:
    """The password in ``path`` (UTF-8, surrounding whitespace stripped) and the file's mode.
    The one reader of password files, for the config check and for every process that then
    reads it: only a regular file (a FIFO is refused, never waited on) of at most
    MAX_PASSWORD_BYTES, holding text. Raises PasswordFileError."""
    try:
        fd, info = _open_regular(path)
        try:
            data = os.read(fd, MAX_PASSWORD_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as err:
        raise PasswordFileError(f"cannot read {path}: {err.strerror or err}") from None
    problem = _password_problem(data)
    if problem:
        raise PasswordFileError(f"{path}: {problem}")
    return data.decode("utf-8").strip(), info.st_mode


def _password_file_warnings(cfg: Config) -> tuple[str, ...]:
    """Check now that ``redis.password_file`` and ``redis.sentinel_password_file`` can be read,
    as every goodsd process will at its start; raises ConfigError at the key's line otherwise.
    Warns when other users can read one."""
    warnings = []
    for key, name in (
        ("redis.password_file", cfg.redis.password_file),
        ("redis.sentinel_password_file", cfg.redis.sentinel_password_file),
    ):
        if not name:
            continue
        try:
            _, mode = read_password_file(name)
        except PasswordFileError as err:
            raise ConfigError(cfg.path, cfg.lines.get(key), key, str(err)) from None
        if mode & stat.S_IROTH:
            warnings.append(
                f"{key} {name} can be read by every user on this host; {_restrict(name)}"
            )
    return tuple(warnings)


def _password_problem(data: bytes) -> str:
    """Why these bytes cannot be a password file as goodsd reads one, or ""."""
    if len(data) > MAX_PASSWORD_BYTES:
        return f"larger than {MAX_PASSWORD_BYTES} bytes: not a password file"
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return "not UTF-8 text"
    return "empty" if not text else ""


def _url_password_warnings(cfg: Config, mode: int) -> tuple[str, ...]:
    """Warn when a config file other users can read holds a password in its redis.url."""
    if not (mode & stat.S_IROTH and url_has_password(cfg.redis.url)):
        return ()
    return (
        f"{cfg.path} holds a Redis password in redis.url and can be read by every user on "
        f"this host; {_restrict(cfg.path)}",
    )


# --- durations and addresses ---------------------------------------------------------------

_UNITS = {
    **dict.fromkeys(("us", "usec"), 1e-6),
    **dict.fromkeys(("ms", "msec"), 1e-3),
    **dict.fromkeys(("s", "sec", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
}
_NUMBER = r"(?:\d+(?:\.\d+)?|\.\d+)"
_DURATION_PART = re.compile(rf"\s*({_NUMBER})\s*([A-Za-z]+)\s*")
_DURATION_HINT = "use e.g. 500ms, 30s, 5min, 1h or a number of seconds"


def parse_duration(value: object) -> float:
    """Seconds from a number or a systemd-style span ("1min 30s"), as unit files write them."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a duration such as 30s, got {_describe(value)}")
    try:
        seconds = _parse_span(value) if isinstance(value, str) else float(value)
    except OverflowError:  # an integer beyond every float
        raise ValueError("must be a finite duration") from None
    if not math.isfinite(seconds):
        raise ValueError("must be a finite duration")
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def _parse_span(text: str) -> float:
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError("must not be negative")
    if re.fullmatch(_NUMBER, stripped):
        return float(stripped)
    if not stripped:
        raise ValueError(f"empty duration ({_DURATION_HINT})")
    total, pos = 0.0, 0
    while pos < len(text):
        part = _DURATION_PART.match(text, pos)
        if part is None:
            raise ValueError(f"invalid duration {_quoted(text)} ({_DURATION_HINT})")
        number, unit = part.groups()
        if unit not in _UNITS:
            raise ValueError(f"unknown unit {_quoted(unit)} in {_quoted(text)} ({_DURATION_HINT})")
        total += float(number) * _UNITS[unit]
        pos = part.end()
    return total


def parse_listen(value: str) -> tuple[str, int]:
    """Split "HOST:PORT" or "[v6]:PORT"; a bare v6 address would make the port ambiguous."""
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
        if ":" in host:
            raise ValueError(f"put an IPv6 address in brackets, e.g. [::1]:9464, got {value!r}")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9464, got {_quoted(value)}")
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        raise ValueError(f"port must be between 1 and 65535, got {_quoted(port)}")
    return host, int(port)


# Words in a URL query parameter's name that say its value is a secret (``password``,
# ``ssl_password``, an ``api_token``...). A name that ends in "file" or "path" names where a
# secret is kept (``ssl_keyfile``), which is shown: hiding it would only hide a path.
_SECRET_WORDS = ("pass", "secret", "token", "key", "auth", "credential")


def secret_parameter(name: str) -> bool:
    """Whether a URL query parameter (its raw name, percent-encoded or not) holds a secret."""
    word = unquote(name).lower()
    return any(part in word for part in _SECRET_WORDS) and not word.endswith(("file", "path"))


def url_has_password(url: str) -> bool:
    """Whether a Redis URL carries a password: in its user-info part or a query parameter."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL urllib can split; the config check refuses it
        return False
    query = parse_qsl(parts.query, keep_blank_values=True)
    return bool(parts.password) or any(secret_parameter(name) and v for name, v in query)


# --- value parsers: each takes what YAML gave and returns the typed value or raises ValueError

_Parse = Callable[[object], object]

# What values each parser takes, in words, for the generated goodsd.yaml(5): see described_keys.
_KINDS: dict[_Parse, str] = {}


def _kind(text: str) -> Callable[[_Parse], _Parse]:
    """Decorator: record ``text`` as what the parser takes ("integer, 0 to 1024")."""

    def mark(parse: _Parse) -> _Parse:
        _KINDS[parse] = text
        return parse

    return mark


def _describe(value: object) -> str:
    """Name a YAML value the way the user wrote it, for 'expected X, got Y' messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return _int_text(value) if _huge(value) else f"integer {value}"
    if isinstance(value, float):
        return f"number {value:g}"
    if isinstance(value, str):
        return f"string {_quoted(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


# Longest piece of a value quoted in a message, so an error stays one readable line.
_QUOTE_MAX = 60


def _clip(text: str) -> str:
    return text if len(text) <= _QUOTE_MAX else text[: _QUOTE_MAX - 3] + "..."


def _quoted(text: str) -> str:
    """``text`` as a Python literal (line breaks and control characters escaped), clipped."""
    return _clip(repr(text))


def _key_text(name: str) -> str:
    """A key as written when it is plain, else quoted, so the message stays one line."""
    return name if name.isprintable() and len(name) <= _QUOTE_MAX else _quoted(name)


def _huge(value: int) -> bool:
    # Python refuses to print integers of more than 4300 digits; nobody reads 30.
    return value.bit_length() > 96


def _int_text(value: int) -> str:
    return f"a huge integer ({value.bit_length()} bits)" if _huge(value) else str(value)


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _span(seconds: float) -> str:
    """A limit the way the README writes it: 7d, 1h, 30s."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return _seconds(seconds)


def _no_nul(text: str) -> str:
    # NUL ends a C string: paths, argv and environment values cannot hold one.
    if "\0" in text:
        raise ValueError("must not contain a NUL character")
    return text


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_describe(value)}")
    return _no_nul(value)


@_kind("non-empty string")
def _nonempty_string(value: object) -> str:
    text = _string(value)
    if not text:
        raise ValueError("must not be empty")
    return text


@_kind("boolean (true or false)")
def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_describe(value)}")
    return value


def _integer(low: int, high: int) -> _Parse:
    @_kind(f"integer, {low} to {high}")
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_describe(value)}")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {_int_text(value)}")
        return value

    return parse


def _duration(low: float = 0.0, *, high: float, above: bool = False) -> _Parse:
    """A duration from low (exclusive when ``above``: a zero timeout would mean 'never wait')
    to high."""

    @_kind(f"duration, {'above' if above else 'at least'} {_span(low)}, at most {_span(high)}")
    def parse(value: object) -> float:
        seconds = parse_duration(value)
        if above and seconds <= low:
            raise ValueError(f"must be greater than {_seconds(low)}, got {_seconds(seconds)}")
        if seconds < low:
            raise ValueError(f"must be at least {_seconds(low)}, got {_seconds(seconds)}")
        if seconds > high:
            raise ValueError(f"must be at most {_span(high)}, got {_seconds(seconds)}")
        return seconds

    return parse


def _choice(*options: str) -> _Parse:
    """One of a few words, case-insensitive, stored lower so comparisons stay simple."""

    @_kind("one of " + ", ".join(options))
    def parse(value: object) -> str:
        text = _string(value)
        if text.lower() not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {_quoted(text)}")
        return text.lower()

    return parse


def _optional(parse: _Parse) -> _Parse:
    """Allow null, for keys whose default is 'not set'."""

    @_kind(f"{_KINDS.get(parse, 'a value')}, or null")
    def optional(value: object) -> object:
        return None if value is None else parse(value)

    return optional


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of strings, got {_describe(value)}")
    for number, item in enumerate(value, start=1):
        if not isinstance(item, str) or not item:
            raise ValueError(f"item {number}: expected a non-empty string, got {_describe(item)}")
        if "\0" in item:
            raise ValueError(f"item {number}: must not contain a NUL character")
    return tuple(value)


_ABSOLUTE = "must be an absolute path (the service runs in /, where a relative one means nothing)"


@_kind("list of absolute paths")
def _absolute_paths(value: object) -> tuple[str, ...]:
    paths = _strings(value)
    for number, path in enumerate(paths, start=1):
        if not os.path.isabs(path):
            raise ValueError(f"item {number}: {_ABSOLUTE}, got {_key_text(path)}")
    return paths


@_kind("absolute path")
def _absolute_path(value: object) -> str:
    path = _nonempty_string(value)
    if not os.path.isabs(path):
        raise ValueError(f"{_ABSOLUTE}, got {_key_text(path)}")
    return path


@_kind("list of strings: the program, then its arguments")
def _command(value: object) -> tuple[str, ...]:
    """argv as a list: goodsd never splits a string, so quoting can't surprise anyone."""
    if not isinstance(value, list) or not value:
        raise ValueError(
            "must be a non-empty list of strings such as [/usr/local/bin/handle-good, --flag], "
            f"got {_describe(value)}"
        )
    for number, arg in enumerate(value, start=1):
        if not isinstance(arg, str):
            raise ValueError(f"every argument must be a string, got {_describe(arg)}")
        if "\0" in arg:
            raise ValueError(f"argument {number}: must not contain a NUL character")
    if not value[0]:
        raise ValueError("the program (first item) must not be empty")
    return tuple(value)


@_kind('string "module.path:callable"')
def _callable_ref(value: object) -> str:
    """'module.path:callable'; checked here so a typo fails at `check`, not in every child."""
    text = _string(value)
    module, sep, attr = text.partition(":")
    dotted = (*module.split("."), *attr.split("."))
    if not sep or not all(name.isidentifier() for name in dotted):
        raise ValueError(f"expected 'module.path:callable', got {_quoted(text)}")
    return text


@_kind("string, no whitespace, no { or }")
def _queue_name(value: object) -> str:
    name = _nonempty_string(value)
    if any(char.isspace() for char in name):
        raise ValueError(f"must not contain whitespace, got {_quoted(name)}")
    if "{" in name or "}" in name:
        raise ValueError(
            f"must not contain '{{' or '}}' (goodsd adds its own hash tag), got {_quoted(name)}"
        )
    return name


# Query parameters goodsd sets itself when it connects (goodsd.redisconn.connect), or whose
# defaults it relies on (replies as raw bytes). redis-py lets the URL win over goodsd's own
# values, so a URL could turn off its timeouts or its no-hidden-retries rule.
_SET_BY_GOODSD = frozenset(
    {
        "socket_timeout",
        "socket_connect_timeout",
        "client_name",
        "health_check_interval",
        "retry",
        "retry_on_timeout",
        "retry_on_error",
        "decode_responses",
        "encoding",
        "encoding_errors",
    }
)
# Text settings redis-py takes from a URL as they are. Every other parameter that redis-py does
# not convert itself (URL_QUERY_ARGUMENT_PARSERS) would reach the connection as a string where
# it needs a flag, a number or an object ("false" is true), and fail only once it connects.
_URL_TEXT_SETTINGS = frozenset(
    {
        "username",
        "password",
        "lib_name",
        "lib_version",
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_ca_path",
        "ssl_password",
        "ssl_ciphers",
    }
)


@_kind(
    "URL: one server, redis://HOST[:PORT][/DB], rediss://... (TLS) or unix:///PATH; "
    "Sentinel, redis+sentinel://HOST[:PORT],.../SERVICE[/DB]; Cluster, "
    "redis+cluster://HOST[:PORT],...; rediss+sentinel:// and rediss+cluster:// for TLS"
)
def _redis_url(value: object) -> str:
    """Check the URL the way goodsd.redisconn.connect will read it: its shape, its hosts, each
    query parameter, then redis-py's own parsing and connection class (which connect to
    nothing). Messages never echo the URL, since it may hold a password."""
    url = _string(value)
    if any(char.isspace() or not char.isprintable() for char in url):
        raise ValueError(
            "must not contain whitespace or control characters (percent-encode them, e.g. %20)"
        )
    if "#" in url:  # redis-py drops what follows, often the rest of a password
        raise ValueError("must not contain '#' (percent-encode it as %23)")
    target = redisurl.parse(url)
    parts = _url_shape(url) if target.deployment is Deployment.SERVER else urlsplit(url)
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in _SET_BY_GOODSD:
            raise ValueError(f"query parameter {name}: set by goodsd")
        if name not in URL_QUERY_ARGUMENT_PARSERS and name not in _URL_TEXT_SETTINGS:
            # the name is shown only when it is a plain word: a mistyped `password:secret`
            # must not print the secret
            shown = name if re.fullmatch(r"[a-z_]{1,40}", name) else "(a name not shown)"
            raise ValueError(f"query parameter {shown}: not a setting redis-py reads from a URL")
        if name == "db" and not (value.isascii() and value.isdigit()):
            raise ValueError("query parameter db: must be a database number, e.g. db=0")
    try:
        if target.deployment is Deployment.SERVER:
            pool = redis.ConnectionPool.from_url(url)
            pool.connection_class(**pool.connection_kwargs)
        else:
            (SSLConnection if target.tls else Connection)(**target.options)
    except Exception as exc:  # whatever redis-py raises for a URL it cannot use
        raise ValueError(_redis_py_reason(exc, parts)) from None
    return url


def _url_shape(url: str) -> SplitResult:
    """Scheme, host, port and database of a one-server Redis URL, checked; raises
    ValueError."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed [ of an IPv6 host
        raise ValueError("not a valid URL") from None
    if parts.scheme == "unix":
        if parts.hostname or not parts.path.startswith("/"):
            raise ValueError("unix:// needs an absolute socket path, e.g. unix:///run/redis.sock")
        return parts
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError:
        raise ValueError("port must be a number between 0 and 65535") from None
    if not parts.hostname:
        raise ValueError("needs a host, e.g. redis://127.0.0.1:6379/0")
    if not redisurl.host_or_address(unquote(parts.hostname)):
        raise ValueError("the host must be a host name or an IP address")
    database = parts.path.lstrip("/")
    if database and not (database.isascii() and database.isdigit()):
        raise ValueError("the path must be a database number, e.g. redis://127.0.0.1:6379/0")
    return parts


def _redis_py_reason(exc: Exception, parts: SplitResult) -> str:
    """Why redis-py refused the URL, without any secret it may hold."""
    unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
    if isinstance(exc, TypeError) and unexpected:
        return f"query parameter {unexpected[1]}: not taken by a {parts.scheme}:// connection"
    message = str(exc)
    query = parse_qsl(parts.query, keep_blank_values=True)
    userinfo = parts.netloc.rpartition("@")[0]
    secrets = [userinfo, *userinfo.split(":"), *(v for n, v in query if secret_parameter(n))]
    shown = [text for s in secrets if s for text in (s, unquote(s))]
    if not message or len(message) > 200 or any(text in message for text in shown):
        return f"redis-py cannot use it ({type(exc).__name__})"
    return f"redis-py cannot use it: {message}"


@_kind('string "HOST:PORT" or "[IPv6]:PORT"')
def _listen(value: object) -> str:
    text = _string(value)
    parse_listen(text)
    return text


# --- schema ---------------------------------------------------------------------------------

# Upper bounds. Every duration and count has one, so a typo (an extra 0, a "d" for an "s")
# fails `check` instead of an overflow in poll(), Redis or Lua at run time.
HOUR = 3600.0
DAY = 86400.0
# A timeout or a delay is waited for with poll/select, whose limit is about 24.8 days (2**31
# ms); a week already means "never" for a work item.
ITEM_MAX = 7 * DAY
# Starting, stopping and leases are about processes and hosts: a day is the most that still
# lets a human notice a stuck pool the same day. Leases go to Redis as SET ... PX.
SUPERVISE_MAX = DAY
# A failed start is retried at least this often, so a fixed cause (Redis back, a file
# restored) is picked up within the hour.
RESTART_DELAY_MAX = HOUR
# A million retries: even with no delay that is days of attempts; an item that needs more is
# one for the dead list. Counts pass through Lua, exact up to 2**53.
RETRIES_MAX = 1_000_000
# Replacing a worker after a billion items is as good as never.
MAX_ITEMS_MAX = 1_000_000_000
# Items in flight per consumer process: enough for thousands of asyncio tasks; each holds a
# scoreboard slot (goodsd.scoreboard.MAX_SLOTS).
CONCURRENCY_MAX = 10_000
# The most items a Redis list can hold.
LIST_MAX = 2**32 - 1
# More replicas than any primary has: a larger number could never be met.
WAIT_REPLICAS_MAX = 100

_TOP_KEYS: dict[str, _Parse] = {
    "queue": _queue_name,
    "pythonpath": _absolute_paths,
}

_SECTIONS: dict[str, tuple[type, dict[str, _Parse]]] = {
    "redis": (
        RedisConfig,
        {
            "url": _redis_url,
            "password_file": _optional(_absolute_path),
            "sentinel_username": _optional(_nonempty_string),
            "sentinel_password_file": _optional(_absolute_path),
            "wait_replicas": _integer(0, WAIT_REPLICAS_MAX),
        },
    ),
    "consumers": (
        ConsumersConfig,
        {
            "processes": _integer(0, 1024),
            "handler": _optional(_callable_ref),
            "command": _optional(_command),
            "setup": _optional(_callable_ref),
            "batch": _integer(1, 10000),
            "timeout": _duration(above=True, high=ITEM_MAX),
            "retries": _integer(0, RETRIES_MAX),
            "retry_delay": _duration(high=ITEM_MAX),
            "max_items": _integer(0, MAX_ITEMS_MAX),
            "decode": _choice("utf-8", "bytes", "json"),
            "concurrency": _integer(1, CONCURRENCY_MAX),
        },
    ),
    "producer": (
        ProducerConfig,
        {
            "processes": _integer(0, 64),
            "source": _optional(_callable_ref),
            "command": _optional(_command),
            "high_watermark": _integer(1, LIST_MAX),
            "low_watermark": _integer(0, LIST_MAX - 1),
            "singleton": _boolean,
            "batch": _integer(1, 10000),
        },
    ),
    "supervisor": (
        SupervisorConfig,
        {
            "graceful_timeout": _duration(above=True, high=SUPERVISE_MAX),
            "restart_delay": _duration(above=True, high=RESTART_DELAY_MAX),
            "restart_delay_max": _duration(above=True, high=SUPERVISE_MAX),
            "lease": _duration(1.0, high=SUPERVISE_MAX),
        },
    ),
    "logging": (
        LoggingConfig,
        {
            "level": _choice("debug", "info", "warning", "error", "critical"),
            "format": _choice("text", "json"),
        },
    ),
    "metrics": (MetricsConfig, {"listen": _optional(_listen)}),
}


@dataclass(frozen=True)
class KeyInfo:
    """One key of the config file, as goodsd.yaml(5) describes it (see described_keys)."""

    key: str  # dotted, e.g. "consumers.batch"
    default: object  # the value when the file leaves the key out (a tuple for lists)
    kind: str  # what values it takes, in words: "integer, 1 to 10000"


def described_keys() -> list[KeyInfo]:
    """Every key of the config file in schema order, with its default and what it takes."""
    defaults = Config()
    found = [
        KeyInfo(name, getattr(defaults, name), _KINDS.get(p, "")) for name, p in _TOP_KEYS.items()
    ]
    for section, (_, schema) in _SECTIONS.items():
        values = getattr(defaults, section)
        for name, parse in schema.items():
            found.append(KeyInfo(f"{section}.{name}", getattr(values, name), _KINDS.get(parse, "")))
    return found


# --- reading YAML ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Open:
    """A collection whose end event has not come yet."""

    anchor: str | None  # its &anchor, if any
    mapping: bool  # a mapping (children alternate key, value) or a sequence
    height: int = 1  # levels from it down to its deepest value so far, itself included
    size: int = 1  # values in it so far, itself included, aliases counted as what they stand for
    children: int = 0  # events directly inside it so far


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that watches the events as the composer takes them, and refuses nesting
    deeper than MAX_DEPTH and more than MAX_VALUES values before the composer, the constructor
    or merge keys (all recursive, merges copying) get to them.

    An alias counts as the value it stands for: `&a [[x]]` used three levels down is five levels
    deep. It also remembers the last plain scalar scanned, for the syntax error of a key without
    its ':'.
    """

    def __init__(self, text: str, path: str) -> None:
        super().__init__(text)
        self.path = path
        self.unclosed: list[_Open] = []  # collections being read, outermost first
        self.shapes: dict[str, tuple[int, int]] = {}  # anchor -> (height, size) of its value
        self.values = 0  # values so far, aliases counted as what they stand for
        self.top_key = ""  # the top-level key being read, for messages
        self.last_plain: ScalarToken | None = None

    def scan_plain(self) -> ScalarToken:
        self.last_plain = super().scan_plain()
        return self.last_plain

    def get_event(self) -> Event:
        event = super().get_event()
        if isinstance(event, ScalarEvent | AliasEvent | CollectionStartEvent):
            self.note_child(event)
        if isinstance(event, ScalarEvent | CollectionStartEvent):
            self.count(event, 1)
        if isinstance(event, ScalarEvent):
            self.finished(event.anchor, height=0, size=1)
        elif isinstance(event, AliasEvent):
            self.alias(event)
        elif isinstance(event, CollectionStartEvent):
            if len(self.unclosed) + 1 > MAX_DEPTH:
                raise self.refuse(event, f"nested deeper than {MAX_DEPTH} levels")
            self.unclosed.append(_Open(event.anchor, isinstance(event, MappingStartEvent)))
        elif isinstance(event, CollectionEndEvent):
            done = self.unclosed.pop()
            self.finished(done.anchor, done.height, done.size)
        return event

    def note_child(self, event: Event) -> None:
        if not self.unclosed:
            return
        parent = self.unclosed[-1]
        if len(self.unclosed) == 1 and parent.mapping and parent.children % 2 == 0:
            self.top_key = event.value if isinstance(event, ScalarEvent) else ""
        parent.children += 1

    def alias(self, event: AliasEvent) -> None:
        if any(collection.anchor == event.anchor for collection in self.unclosed):
            raise self.refuse(
                event, f"alias *{event.anchor} refers to a collection that contains it"
            )
        if event.anchor not in self.shapes:
            return  # the composer reports the undefined alias
        height, size = self.shapes[event.anchor]
        if len(self.unclosed) + height > MAX_DEPTH:
            raise self.refuse(event, f"nested deeper than {MAX_DEPTH} levels")
        self.count(event, size)
        self.finished(None, height, size)

    def count(self, event: Event, values: int) -> None:
        self.values += values
        if self.values > MAX_VALUES:
            reason = f"more than {MAX_VALUES} values (aliases counted as what they stand for)"
            raise self.refuse(event, reason)

    def finished(self, anchor: str | None, height: int, size: int) -> None:
        """A value ended: record its shape under its anchor, and add it to its parent's."""
        if anchor is not None:
            self.shapes[anchor] = (height, size)
        if self.unclosed:
            parent = self.unclosed[-1]
            parent.height = max(parent.height, height + 1)
            parent.size += size

    def refuse(self, event: Event, reason: str) -> ConfigError:
        return ConfigError(self.path, event.start_mark.line + 1, _key_text(self.top_key), reason)


def _syntax_error(
    err: yaml.MarkedYAMLError, last_plain: ScalarToken | None, text: str, path: str
) -> ConfigError:
    """A YAML error on the line to fix. PyYAML marks where it gave up (problem_mark); for a
    token that never ended (a quote, a flow collection, a key without ':') that is lines
    later, and the line to fix is where the token began (context_mark). Block-structure errors
    are where PyYAML gave up. When the two lines differ, the reason names the other one too."""
    problem, context = err.problem_mark, err.context_mark
    key_line = _line_missing_colon(err, last_plain, text)
    if key_line is not None and problem is not None:
        reason = (
            "invalid YAML: expected ':' after the key "
            f"(noticed on line {problem.line + 1}: {err.problem})"
        )
        return ConfigError(path, key_line, "", reason)
    began = context is not None and (err.context or "").startswith(
        ("while scanning", "while parsing a flow")
    )
    mark = context if began else problem or context
    line = mark.line + 1 if mark else None
    described = err.context
    if described and not began and context and context.line + 1 != line:
        described += f" (on line {context.line + 1})"
    reason = "invalid YAML: " + ", ".join(part for part in (described, err.problem) if part)
    if began and problem and problem.line + 1 != line:
        reason += f" (noticed on line {problem.line + 1})"
    return ConfigError(path, line, "", reason)


def _line_missing_colon(
    err: yaml.MarkedYAMLError, last_plain: ScalarToken | None, text: str
) -> int | None:
    """The line of a key written without its ':' (`handler a:b`), which PyYAML reads as a plain
    scalar running on into the next key, where it stops at that key's ':'. Only a scalar that
    starts its line is taken for a key: one after `key: ` ran on because the next line is
    indented too deep, and that line is the one to fix."""
    problem = err.problem_mark
    if (
        err.problem != "mapping values are not allowed here"
        or problem is None
        or last_plain is None
    ):
        return None
    start = last_plain.start_mark
    if not (start.line < problem.line == last_plain.end_mark.line):
        return None
    line_start = text.rfind("\n", 0, start.index) + 1
    return start.line + 1 if not text[line_start : start.index].strip() else None


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _line(node: Node) -> int:
    return node.start_mark.line + 1


class _Builder:
    """Walks the composed YAML tree, noting where each key sat for the cross-key checks."""

    def __init__(self, path: str, loader: yaml.SafeLoader) -> None:
        self.path = path
        self.loader = loader  # constructs values exactly as yaml.safe_load would
        self.key_lines: dict[str, int] = {}  # dotted key -> line of the key
        self.value_lines: dict[str, int] = {}  # dotted key -> line of its value

    def error(self, line: int | None, key: str, reason: str) -> ConfigError:
        return ConfigError(self.path, line, key, reason)

    def build(self, root: Node | None) -> Config:
        values: dict[str, object] = {}
        for name, (key_node, value_node) in self.entries(root, "").items():
            if name in _TOP_KEYS:
                values[name] = self.leaf(name, key_node, value_node, _TOP_KEYS[name])
            elif name in _SECTIONS:
                values[name] = self.section(name, key_node, value_node)
            else:
                raise self.unknown(_key_text(name), key_node, [*_TOP_KEYS, *_SECTIONS])
        config = Config(**values, path=self.path, lines=dict(self.key_lines))
        self.check_relations(config)
        return config

    def entries(self, node: Node | None, where: str) -> dict[str, tuple[Node, Node]]:
        """Keys of a mapping in file order; null counts as empty so a bare `consumers:` works."""
        if node is None or (isinstance(node, ScalarNode) and node.tag.endswith(":null")):
            return {}
        if not isinstance(node, MappingNode):
            what = _describe(self.construct(node, where))
            raise self.error(_line(node), where, f"expected a mapping of keys, got {what}")
        first_seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            name = self.key_name(key_node, where)
            if name in first_seen:
                reason = f"duplicate key (first on line {first_seen[name]})"
                dotted = f"{where}.{_key_text(name)}" if where else _key_text(name)
                raise self.error(_line(key_node), dotted, reason)
            first_seen[name] = _line(key_node)
        self.loader.flatten_mapping(node)  # expand `<<: *anchor`; explicit keys win
        return {self.key_name(key, where): (key, value) for key, value in node.value}

    def key_name(self, node: Node, where: str) -> str:
        name = self.construct(node, where) if isinstance(node, ScalarNode) else None
        if not isinstance(name, str):
            raise self.error(_line(node), where, "keys must be strings")
        return name

    def unknown(self, dotted: str, key_node: Node, known: list[str]) -> ConfigError:
        reason = "unknown key"
        close = difflib.get_close_matches(dotted.rpartition(".")[2], known, n=1)
        if close:
            reason += f" (did you mean {close[0]}?)"
        return self.error(_line(key_node), dotted, reason)

    def section(self, name: str, key_node: Node, node: Node) -> object:
        cls, schema = _SECTIONS[name]
        self.key_lines[name] = _line(key_node)
        values: dict[str, object] = {}
        for key, (sub_key_node, value_node) in self.entries(node, name).items():
            dotted = f"{name}.{_key_text(key)}"
            if key not in schema:
                raise self.unknown(dotted, sub_key_node, list(schema))
            values[key] = self.leaf(dotted, sub_key_node, value_node, schema[key])
        return cls(**values)

    def leaf(self, dotted: str, key_node: Node, value_node: Node, parse: _Parse) -> object:
        self.key_lines[dotted] = _line(key_node)
        self.value_lines[dotted] = _line(value_node)
        raw = self.construct(value_node, dotted)
        try:
            return parse(raw)
        except ValueError as err:
            raise self.error(_line(value_node), dotted, str(err)) from None

    def construct(self, node: Node, dotted: str) -> object:
        """The value exactly as yaml.safe_load builds it, with bad tags told against the key."""
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as err:
            raise self.error(_line(node), dotted, f"invalid YAML: {err.problem}") from None
        except Exception as err:  # PyYAML's constructors pass on what the value raises:
            # ValueError for `!!int abc`, KeyError for `!!bool maybe` (safe_load fails too)
            reason = f"invalid YAML value: {type(err).__name__}: {_clip(str(err))}"
            raise self.error(_line(node), dotted, reason) from None

    def check_relations(self, config: Config) -> None:
        """Rules that involve two keys; blame the key the user actually wrote."""
        consumers, producer = config.consumers, config.producer
        sentinel = redisurl.parse(config.redis.url).deployment is Deployment.SENTINEL
        for key in ("sentinel_username", "sentinel_password_file"):
            if getattr(config.redis, key) is not None and not sentinel:
                dotted = f"redis.{key}"
                reason = "only for a redis+sentinel:// or rediss+sentinel:// url"
                raise self.error(self.value_lines.get(dotted), dotted, reason)
        self.one_of("consumers", "handler", "command", config, consumers.processes > 0)
        self.one_of("producer", "source", "command", config, producer.processes > 0)
        if producer.low_watermark >= producer.high_watermark:
            raise self.blame_written(
                (
                    "producer.low_watermark",
                    f"must be below high_watermark ({producer.high_watermark}), "
                    f"got {producer.low_watermark}",
                ),
                (
                    "producer.high_watermark",
                    f"must be above low_watermark ({producer.low_watermark}), "
                    f"got {producer.high_watermark}",
                ),
            )
        supervisor = config.supervisor
        if supervisor.restart_delay_max < supervisor.restart_delay:
            raise self.blame_written(
                (
                    "supervisor.restart_delay_max",
                    f"must be at least restart_delay ({_seconds(supervisor.restart_delay)}), "
                    f"got {_seconds(supervisor.restart_delay_max)}",
                ),
                (
                    "supervisor.restart_delay",
                    "must not exceed restart_delay_max "
                    f"({_seconds(supervisor.restart_delay_max)}), "
                    f"got {_seconds(supervisor.restart_delay)}",
                ),
            )

    def blame_written(self, first: tuple[str, str], second: tuple[str, str]) -> ConfigError:
        """Two keys disagree, each given as (dotted key, reason): blame ``first`` when the
        file sets it, else ``second``, so the error points at a line the user wrote."""
        dotted, reason = first if first[0] in self.value_lines else second
        return self.error(self.value_lines.get(dotted), dotted, reason)

    def one_of(self, section: str, first: str, second: str, config: Config, needed: bool) -> None:
        """Exactly one way to run items: a Python callable or a command, never both."""
        settings = getattr(config, section)
        given = [key for key in (first, second) if getattr(settings, key) is not None]
        if len(given) == 2:
            later = max(given, key=lambda key: self.key_lines[f"{section}.{key}"])
            dotted = f"{section}.{later}"
            reason = f"give either {first} or {second}, not both"
            raise self.error(self.key_lines[dotted], dotted, reason)
        if needed and not given:
            raise self.error(self.key_lines.get(section), section, f"set {first} or {second}")
