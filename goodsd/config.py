"""YAML config -> frozen dataclasses.

This is the only module that knows YAML. Everything else receives a frozen `Config`, so a
child process holds an immutable snapshot and a reload can compare old and new by value.

Validation is strict because a typo in a daemon's config should stop it at start (or keep the
old config on reload) instead of silently running with a default. Each error names the file,
the line and the dotted key, so `goodsd check` points straight at the mistake.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.reader import ReaderError

DEFAULT_PATH = "/etc/goodsd.yaml"


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


def resolve_path(cli_path: str | None, environ: Mapping[str, str]) -> str:
    """-c PATH, else $GOODSD_CONFIG, else /etc/goodsd.yaml; empty values count as unset."""
    return cli_path or environ.get("GOODSD_CONFIG") or DEFAULT_PATH


def load(path: str) -> Config:
    """Read and validate the file; an unreadable file is a config error, not a crash."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise ConfigError(path, None, "", f"cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(path, None, "", f"not UTF-8 text (byte {err.start})") from None
    return parse(text, path)


def parse(text: str, path: str = "<string>") -> Config:
    """Validate YAML text into a Config; every check lives here so `check` and `run` agree."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            return _Builder(path, loader).build(loader.get_single_node())
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        reason = ", ".join(part for part in (err.context, err.problem) if part)
        raise ConfigError(path, line, "", f"invalid YAML: {reason}") from None
    except ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        reason = f"invalid YAML: character #x{err.character:04x}: {err.reason}"
        raise ConfigError(path, line, "", reason) from None


def dump(data: Mapping[str, object]) -> str:
    """A config mapping as YAML text that ``parse`` reads back, keys in the given order. For
    programs that write a config (the demo, benchmarks), so only this module knows YAML."""
    return yaml.safe_dump(dict(data), sort_keys=False)


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
    seconds = _parse_span(value) if isinstance(value, str) else float(value)
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
            raise ValueError(f"invalid duration {text!r} ({_DURATION_HINT})")
        number, unit = part.groups()
        if unit not in _UNITS:
            raise ValueError(f"unknown unit {unit!r} in {text!r} ({_DURATION_HINT})")
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
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9464, got {value!r}")
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"port must be between 1 and 65535, got {port!r}")
    return host, int(port)


# --- value parsers: each takes what YAML gave and returns the typed value or raises ValueError

_Parse = Callable[[object], object]


def _describe(value: object) -> str:
    """Name a YAML value the way the user wrote it, for 'expected X, got Y' messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value:g}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_describe(value)}")
    return value


def _nonempty_string(value: object) -> str:
    text = _string(value)
    if not text:
        raise ValueError("must not be empty")
    return text


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_describe(value)}")
    return value


def _integer(low: int, high: int | None = None) -> _Parse:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_describe(value)}")
        if value < low or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise ValueError(f"must be {bounds}, got {value}")
        return value

    return parse


def _duration(low: float = 0.0, *, above: bool = False) -> _Parse:
    """A duration >= low, or > low when `above` (a zero timeout would mean 'never wait')."""

    def parse(value: object) -> float:
        seconds = parse_duration(value)
        if above and seconds <= low:
            raise ValueError(f"must be greater than {_seconds(low)}, got {_seconds(seconds)}")
        if seconds < low:
            raise ValueError(f"must be at least {_seconds(low)}, got {_seconds(seconds)}")
        return seconds

    return parse


def _choice(*options: str) -> _Parse:
    """One of a few words, case-insensitive, stored lower so comparisons stay simple."""

    def parse(value: object) -> str:
        word = _string(value).lower()
        if word not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")
        return word

    return parse


def _optional(parse: _Parse) -> _Parse:
    """Allow null, for keys whose default is 'not set'."""
    return lambda value: None if value is None else parse(value)


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of strings, got {_describe(value)}")
    for number, item in enumerate(value, start=1):
        if not isinstance(item, str) or not item:
            raise ValueError(f"item {number}: expected a non-empty string, got {_describe(item)}")
    return tuple(value)


def _command(value: object) -> tuple[str, ...]:
    """argv as a list: goodsd never splits a string, so quoting can't surprise anyone."""
    if not isinstance(value, list) or not value:
        raise ValueError(
            "must be a non-empty list of strings such as [/usr/local/bin/handle-good, --flag], "
            f"got {_describe(value)}"
        )
    for arg in value:
        if not isinstance(arg, str):
            raise ValueError(f"every argument must be a string, got {_describe(arg)}")
    if not value[0]:
        raise ValueError("the program (first item) must not be empty")
    return tuple(value)


def _callable_ref(value: object) -> str:
    """'module.path:callable'; checked here so a typo fails at `check`, not in every child."""
    text = _string(value)
    module, sep, attr = text.partition(":")
    dotted = (*module.split("."), *attr.split("."))
    if not sep or not all(name.isidentifier() for name in dotted):
        raise ValueError(f"expected 'module.path:callable', got {text!r}")
    return text


def _queue_name(value: object) -> str:
    name = _nonempty_string(value)
    if any(char.isspace() for char in name):
        raise ValueError(f"must not contain whitespace, got {name!r}")
    if "{" in name or "}" in name:
        raise ValueError(
            f"must not contain '{{' or '}}' (goodsd adds its own hash tag), got {name!r}"
        )
    return name


def _redis_url(value: object) -> str:
    """Check the shape of the URL; the message never echoes it, since it may hold a password."""
    url = _string(value)
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed [ of an IPv6 host
        raise ValueError("not a valid URL") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must start with redis://, rediss:// or unix://")
    if parts.scheme == "unix":
        if parts.hostname or not parts.path.startswith("/"):
            raise ValueError("unix:// needs an absolute socket path, e.g. unix:///run/redis.sock")
        return url
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError:
        raise ValueError("port must be a number between 0 and 65535") from None
    if not parts.hostname:
        raise ValueError("needs a host, e.g. redis://127.0.0.1:6379/0")
    database = parts.path.lstrip("/")
    if database and not (database.isascii() and database.isdigit()):
        raise ValueError("the path must be a database number, e.g. redis://127.0.0.1:6379/0")
    return url


def _listen(value: object) -> str:
    text = _string(value)
    parse_listen(text)
    return text


# --- schema ---------------------------------------------------------------------------------

_TOP_KEYS: dict[str, _Parse] = {
    "queue": _queue_name,
    "pythonpath": _strings,
}

_SECTIONS: dict[str, tuple[type, dict[str, _Parse]]] = {
    "redis": (
        RedisConfig,
        {"url": _redis_url, "password_file": _optional(_nonempty_string)},
    ),
    "consumers": (
        ConsumersConfig,
        {
            "processes": _integer(0, 1024),
            "handler": _optional(_callable_ref),
            "command": _optional(_command),
            "setup": _optional(_callable_ref),
            "batch": _integer(1, 10000),
            "timeout": _duration(above=True),
            "retries": _integer(0),
            "retry_delay": _duration(),
            "max_items": _integer(0),
            "decode": _choice("utf-8", "bytes", "json"),
        },
    ),
    "producer": (
        ProducerConfig,
        {
            "processes": _integer(0, 64),
            "source": _optional(_callable_ref),
            "command": _optional(_command),
            "high_watermark": _integer(1),
            "low_watermark": _integer(0),
            "singleton": _boolean,
            "batch": _integer(1, 10000),
        },
    ),
    "supervisor": (
        SupervisorConfig,
        {
            "graceful_timeout": _duration(above=True),
            "restart_delay": _duration(above=True),
            "restart_delay_max": _duration(above=True),
            "lease": _duration(1.0),
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
                raise self.unknown(name, key_node, [*_TOP_KEYS, *_SECTIONS])
        config = Config(**values, path=self.path)
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
                dotted = f"{where}.{name}" if where else name
                raise self.error(_line(key_node), dotted, reason)
            first_seen[name] = _line(key_node)
        self.loader.flatten_mapping(node)  # expand `<<: *anchor`; explicit keys win
        return {self.key_name(key, where): (key, value) for key, value in node.value}

    def key_name(self, node: Node, where: str) -> str:
        name = self.loader.construct_object(node) if isinstance(node, ScalarNode) else None
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
            dotted = f"{name}.{key}"
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
        except ValueError as err:  # e.g. `!!int abc`: safe_load fails on it too
            raise self.error(_line(node), dotted, f"invalid YAML value: {err}") from None

    def check_relations(self, config: Config) -> None:
        """Rules that involve two keys; blame the key the user actually wrote."""
        consumers, producer = config.consumers, config.producer
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
