"""Config parsing: defaults, every duration form, and the exact text of each error.

The messages are asserted word for word because they are the user interface of `goodsd check`:
a message that loses its line number or key path is a regression.
"""

import dataclasses
import pickle
import textwrap
import time

import pytest

from goodsd import config
from goodsd.config import Config, ConfigError, parse, parse_duration, parse_listen
from goodsd.exits import EXIT_CONFIG

# The smallest valid file: the default of 4 consumers needs something to run.
MINIMAL = "consumers:\n  handler: app.tasks:handle\n"


def error_of(text: str, path: str = "goodsd.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse(textwrap.dedent(text), path)
    return caught.value


# --- valid files -------------------------------------------------------------------------------


def test_minimal_file_gives_every_default() -> None:
    # Given only a handler
    # When it is parsed
    cfg = parse(MINIMAL, "goodsd.yaml")
    # Then every other setting has its documented default
    assert cfg == Config(
        consumers=config.ConsumersConfig(handler="app.tasks:handle"), path="goodsd.yaml"
    )
    assert cfg.redis == config.RedisConfig("redis://127.0.0.1:6379/0", None)
    assert cfg.queue == "goods2"
    assert cfg.pythonpath == ()
    assert (cfg.consumers.processes, cfg.consumers.batch, cfg.consumers.timeout) == (4, 10, 30.0)
    assert (cfg.consumers.retries, cfg.consumers.retry_delay) == (3, 5.0)
    assert (cfg.consumers.max_items, cfg.consumers.decode) == (0, "utf-8")
    assert cfg.consumers.concurrency == 1
    assert cfg.producer == config.ProducerConfig(0, None, None, 10000, 8000, False, 100)
    assert cfg.supervisor == config.SupervisorConfig(30.0, 1.0, 60.0, 30.0)
    assert cfg.logging == config.LoggingConfig("info", "text")
    assert cfg.metrics.listen is None


def test_every_key_is_read() -> None:
    # Given a file that sets every key to something other than its default
    text = """\
        redis:
          url: rediss://cache.example:6380/2
          password_file: /run/credentials/goodsd/redis
        queue: orders
        pythonpath: [/srv/app, /srv/lib]
        consumers:
          processes: 8
          command: [/usr/local/bin/handle-good, --flag]
          setup: app.boot:init
          batch: 50
          timeout: 1min 30s
          retries: 0
          retry_delay: 500ms
          max_items: 1000
          decode: JSON
          concurrency: 100
        producer:
          processes: 2
          source: app.feed:items
          high_watermark: 500
          low_watermark: 0
          singleton: true
          batch: 20
        supervisor:
          graceful_timeout: 2min
          restart_delay: 2s
          restart_delay_max: 2s
          lease: 1s
        logging:
          level: WARNING
          format: json
        metrics:
          listen: "[::1]:9464"
    """
    # When it is parsed
    cfg = parse(textwrap.dedent(text))
    # Then each value lands in its field, durations in seconds, words lower-cased
    assert cfg.redis == config.RedisConfig(
        "rediss://cache.example:6380/2", "/run/credentials/goodsd/redis"
    )
    assert (cfg.queue, cfg.pythonpath) == ("orders", ("/srv/app", "/srv/lib"))
    assert cfg.consumers == config.ConsumersConfig(
        processes=8,
        handler=None,
        command=("/usr/local/bin/handle-good", "--flag"),
        setup="app.boot:init",
        batch=50,
        timeout=90.0,
        retries=0,
        retry_delay=0.5,
        max_items=1000,
        decode="json",
        concurrency=100,
    )
    assert cfg.producer == config.ProducerConfig(2, "app.feed:items", None, 500, 0, True, 20)
    assert cfg.supervisor == config.SupervisorConfig(120.0, 2.0, 2.0, 1.0)
    assert cfg.logging == config.LoggingConfig("warning", "json")
    assert cfg.metrics.listen == "[::1]:9464"


def test_schema_covers_every_dataclass_field() -> None:
    # Given the key table and the dataclasses
    # Then every field can be set from YAML and no key is without a field
    for name, (cls, keys) in config._SECTIONS.items():
        assert set(keys) == {f.name for f in dataclasses.fields(cls)}, name
    top = {f.name for f in dataclasses.fields(Config)} - {"path", "lines", "warnings"}
    assert top == set(config._TOP_KEYS) | set(config._SECTIONS)


def test_no_consumers_needs_no_handler() -> None:
    # Given a host that only produces
    cfg = parse("consumers:\n  processes: 0\nproducer:\n  processes: 1\n  source: a:b\n")
    # Then neither handler nor command is required
    assert (cfg.consumers.processes, cfg.consumers.handler, cfg.consumers.command) == (
        0,
        None,
        None,
    )


def test_null_section_and_explicit_null_mean_defaults() -> None:
    # Given an emptied section and a null optional key
    cfg = parse(MINIMAL + "producer:\nmetrics:\n  listen: null\nredis:\n  password_file: ~\n")
    # Then they read as "not set"
    assert cfg.producer == config.ProducerConfig()
    assert cfg.metrics.listen is None
    assert cfg.redis.password_file is None


def test_unix_socket_url_with_password_is_accepted() -> None:
    cfg = parse(MINIMAL + "redis:\n  url: unix://:pw@/run/redis/redis.sock?db=1\n")
    assert cfg.redis.url == "unix://:pw@/run/redis/redis.sock?db=1"


def test_merge_keys_work_as_in_safe_load() -> None:
    # Given a section built from an anchor, with one key overridden
    text = "consumers:\n  <<: &base {handler: a:b, batch: 3}\n  batch: 4\n"
    # When it is parsed
    cfg = parse(text)
    # Then the merged key is kept and the explicit key wins
    assert (cfg.consumers.handler, cfg.consumers.batch) == ("a:b", 4)


def test_config_is_frozen() -> None:
    # Given a parsed config
    cfg = parse(MINIMAL)
    # When someone tries to change it, top level or nested
    # Then it refuses: children hold a snapshot that cannot drift
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.queue = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.consumers.batch = 1  # type: ignore[misc]
    assert hash(cfg) == hash(parse(MINIMAL))


# --- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        (0, 0.0),
        (30, 30.0),
        (2.5, 2.5),
        ("30", 30.0),
        ("1.5", 1.5),
        ("250us", 0.00025),
        ("250usec", 0.00025),
        ("500ms", 0.5),
        ("500msec", 0.5),
        ("30s", 30.0),
        ("30sec", 30.0),
        ("1second", 1.0),
        ("2 seconds", 2.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("5m", 300.0),
        ("5min", 300.0),
        ("1minute", 60.0),
        ("2minutes", 120.0),
        ("1h", 3600.0),
        ("1hr", 3600.0),
        ("1hour", 3600.0),
        ("2hours", 7200.0),
        ("2d", 172800.0),
        ("1day", 86400.0),
        ("2days", 172800.0),
        ("1min 30s", 90.0),
        ("1min30s", 90.0),
        (" 1h 1min 1s ", 3661.0),
    ],
)
def test_parse_duration_accepts(given: object, seconds: float) -> None:
    assert parse_duration(given) == pytest.approx(seconds)


HINT = "(use e.g. 500ms, 30s, 5min, 1h or a number of seconds)"


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        (True, "expected a duration such as 30s, got boolean true"),
        (None, "expected a duration such as 30s, got null"),
        ([1], "expected a duration such as 30s, got a list"),
        (-1, "must not be negative"),
        ("-5s", "must not be negative"),
        (float("inf"), "must be a finite duration"),
        ("", f"empty duration {HINT}"),
        ("5mins", f"unknown unit 'mins' in '5mins' {HINT}"),
        ("soon", f"invalid duration 'soon' {HINT}"),
        ("1min 30", f"invalid duration '1min 30' {HINT}"),
        ("1e3", f"unknown unit 'e' in '1e3' {HINT}"),
    ],
)
def test_parse_duration_rejects(given: object, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(given)
    assert str(caught.value) == reason


def test_duration_in_file_accepts_number_and_span() -> None:
    # Given durations as a YAML number and as a span
    cfg = parse(MINIMAL + "  timeout: 45\n  retry_delay: 1min 30s\n")
    # Then both are seconds
    assert (cfg.consumers.timeout, cfg.consumers.retry_delay) == (45.0, 90.0)


# --- errors: every message exactly, with its line --------------------------------------------

ERRORS = [
    # unknown keys, with and without a close match
    (
        "consumers:\n  handler: a:b\n  procesess: 3\n",
        "goodsd.yaml:3: consumers.procesess: unknown key (did you mean processes?)",
    ),
    (MINIMAL + "  colour: blue\n", "goodsd.yaml:3: consumers.colour: unknown key"),
    (MINIMAL + "qeueu: x\n", "goodsd.yaml:3: qeueu: unknown key (did you mean queue?)"),
    (MINIMAL + "extra: 1\n", "goodsd.yaml:3: extra: unknown key"),
    (
        MINIMAL + "  batch: 1\n  batch: 2\n",
        "goodsd.yaml:4: consumers.batch: duplicate key (first on line 3)",
    ),
    # wrong types
    (
        MINIMAL + "  batch: '5'\n",
        "goodsd.yaml:3: consumers.batch: expected an integer, got string '5'",
    ),
    (
        MINIMAL + "  batch: true\n",
        "goodsd.yaml:3: consumers.batch: expected an integer, got boolean true",
    ),
    (
        MINIMAL + "  batch: 2.5\n",
        "goodsd.yaml:3: consumers.batch: expected an integer, got number 2.5",
    ),
    (
        MINIMAL + "  processes: null\n",
        "goodsd.yaml:3: consumers.processes: expected an integer, got null",
    ),
    (
        MINIMAL + "  processes:\n",
        "goodsd.yaml:3: consumers.processes: expected an integer, got null",
    ),
    (
        MINIMAL + "  timeout: yes\n",
        "goodsd.yaml:3: consumers.timeout: expected a duration such as 30s, got boolean true",
    ),
    (
        MINIMAL + "producer:\n  singleton: 1\n",
        "goodsd.yaml:4: producer.singleton: expected true or false, got integer 1",
    ),
    (MINIMAL + "queue: 7\n", "goodsd.yaml:3: queue: expected a string, got integer 7"),
    (MINIMAL + "queue: null\n", "goodsd.yaml:3: queue: expected a string, got null"),
    (
        MINIMAL + "pythonpath: /srv/app\n",
        "goodsd.yaml:3: pythonpath: expected a list of strings, got string '/srv/app'",
    ),
    (
        MINIMAL + "pythonpath: [/a, 3]\n",
        "goodsd.yaml:3: pythonpath: item 2: expected a non-empty string, got integer 3",
    ),
    (MINIMAL + "pythonpath:\n", "goodsd.yaml:3: pythonpath: expected a list of strings, got null"),
    ("consumers: 4\n", "goodsd.yaml:1: consumers: expected a mapping of keys, got integer 4"),
    ("- a\n- b\n", "goodsd.yaml:1: expected a mapping of keys, got a list"),
    ("{1: 2}\n", "goodsd.yaml:1: keys must be strings"),
    (
        MINIMAL + "logging:\n  level: [info]\n",
        "goodsd.yaml:4: logging.level: expected a string, got a list",
    ),
    # command: a non-empty list of strings, never a string to split
    (
        "consumers:\n  command: /bin/handle --flag\n",
        "goodsd.yaml:2: consumers.command: "
        "must be a non-empty list of strings such as [/usr/local/bin/handle-good, --flag], got "
        "string '/bin/handle --flag'",
    ),
    (
        "consumers:\n  command: []\n",
        "goodsd.yaml:2: consumers.command: "
        "must be a non-empty list of strings such as [/usr/local/bin/handle-good, --flag], got a "
        "list",
    ),
    (
        "consumers:\n  command: [/bin/x, 5]\n",
        "goodsd.yaml:2: consumers.command: every argument must be a string, got integer 5",
    ),
    (
        "consumers:\n  command: ['', x]\n",
        "goodsd.yaml:2: consumers.command: the program (first item) must not be empty",
    ),
    # module:callable references
    (
        "consumers:\n  handler: app.tasks.handle\n",
        "goodsd.yaml:2: consumers.handler: expected 'module.path:callable', got 'app.tasks.handle'",
    ),
    (
        "consumers:\n  handler: app-x:run\n",
        "goodsd.yaml:2: consumers.handler: expected 'module.path:callable', got 'app-x:run'",
    ),
    (
        "consumers:\n  handler: 'app:'\n",
        "goodsd.yaml:2: consumers.handler: expected 'module.path:callable', got 'app:'",
    ),
    (
        MINIMAL + "  setup: init\n",
        "goodsd.yaml:3: consumers.setup: expected 'module.path:callable', got 'init'",
    ),
    (
        MINIMAL + "producer:\n  source: feed\n",
        "goodsd.yaml:4: producer.source: expected 'module.path:callable', got 'feed'",
    ),
    # ranges
    (
        MINIMAL + "  processes: -1\n",
        "goodsd.yaml:3: consumers.processes: must be between 0 and 1024, got -1",
    ),
    (
        MINIMAL + "  processes: 1025\n",
        "goodsd.yaml:3: consumers.processes: must be between 0 and 1024, got 1025",
    ),
    (
        MINIMAL + "producer:\n  processes: 65\n",
        "goodsd.yaml:4: producer.processes: must be between 0 and 64, got 65",
    ),
    (
        MINIMAL + "  batch: 0\n",
        "goodsd.yaml:3: consumers.batch: must be between 1 and 10000, got 0",
    ),
    (
        MINIMAL + "  batch: 10001\n",
        "goodsd.yaml:3: consumers.batch: must be between 1 and 10000, got 10001",
    ),
    (
        MINIMAL + "producer:\n  batch: 0\n",
        "goodsd.yaml:4: producer.batch: must be between 1 and 10000, got 0",
    ),
    (
        MINIMAL + "  retries: -1\n",
        "goodsd.yaml:3: consumers.retries: must be between 0 and 1000000, got -1",
    ),
    (
        MINIMAL + "  retries: 1000001\n",
        "goodsd.yaml:3: consumers.retries: must be between 0 and 1000000, got 1000001",
    ),
    (
        MINIMAL + "  concurrency: 0\n",
        "goodsd.yaml:3: consumers.concurrency: must be between 1 and 10000, got 0",
    ),
    (
        MINIMAL + "  concurrency: 10001\n",
        "goodsd.yaml:3: consumers.concurrency: must be between 1 and 10000, got 10001",
    ),
    (
        MINIMAL + "  max_items: -5\n",
        "goodsd.yaml:3: consumers.max_items: must be between 0 and 1000000000, got -5",
    ),
    (
        MINIMAL + "  max_items: 99999999999999999999999999\n",
        "goodsd.yaml:3: consumers.max_items: "
        "must be between 0 and 1000000000, got 99999999999999999999999999",
    ),
    (
        MINIMAL + "  max_items: 0x" + "f" * 2000 + "\n",
        "goodsd.yaml:3: consumers.max_items: "
        "must be between 0 and 1000000000, got a huge integer (8000 bits)",
    ),
    (
        MINIMAL + "  timeout: 0x" + "f" * 2000 + "\n",
        "goodsd.yaml:3: consumers.timeout: must be a finite duration",
    ),
    (
        MINIMAL + "  timeout: 10000000000\n",
        "goodsd.yaml:3: consumers.timeout: must be at most 7d, got 1e+10s",
    ),
    (
        MINIMAL + "  timeout: 7d 1s\n",
        "goodsd.yaml:3: consumers.timeout: must be at most 7d, got 604801s",
    ),
    (
        MINIMAL + "  retry_delay: 8d\n",
        "goodsd.yaml:3: consumers.retry_delay: must be at most 7d, got 691200s",
    ),
    (
        MINIMAL + "supervisor:\n  lease: 99999999999999999999999999d\n",
        "goodsd.yaml:4: supervisor.lease: must be at most 1d, got 8.64e+30s",
    ),
    (
        MINIMAL + "supervisor:\n  graceful_timeout: 25h\n",
        "goodsd.yaml:4: supervisor.graceful_timeout: must be at most 1d, got 90000s",
    ),
    (
        MINIMAL + "supervisor:\n  restart_delay: 2h\n  restart_delay_max: 1d\n",
        "goodsd.yaml:4: supervisor.restart_delay: must be at most 1h, got 7200s",
    ),
    (
        MINIMAL + "supervisor:\n  restart_delay_max: 2d\n",
        "goodsd.yaml:4: supervisor.restart_delay_max: must be at most 1d, got 172800s",
    ),
    (
        MINIMAL + "producer:\n  high_watermark: 4294967296\n",
        "goodsd.yaml:4: producer.high_watermark: must be between 1 and 4294967295, got 4294967296",
    ),
    (
        MINIMAL + "  timeout: 0\n",
        "goodsd.yaml:3: consumers.timeout: must be greater than 0s, got 0s",
    ),
    (
        MINIMAL + "  retry_delay: -1s\n",
        "goodsd.yaml:3: consumers.retry_delay: must not be negative",
    ),
    (
        MINIMAL + "  timeout: 5 fortnights\n",
        "goodsd.yaml:3: consumers.timeout: "
        "unknown unit 'fortnights' in '5 fortnights' (use e.g. 500ms, 30s, 5min, 1h or a number "
        "of seconds)",
    ),
    (
        MINIMAL + "supervisor:\n  graceful_timeout: 0s\n",
        "goodsd.yaml:4: supervisor.graceful_timeout: must be greater than 0s, got 0s",
    ),
    (
        MINIMAL + "supervisor:\n  restart_delay: 0\n",
        "goodsd.yaml:4: supervisor.restart_delay: must be greater than 0s, got 0s",
    ),
    (
        MINIMAL + "supervisor:\n  lease: 500ms\n",
        "goodsd.yaml:4: supervisor.lease: must be at least 1s, got 0.5s",
    ),
    (
        MINIMAL + "supervisor:\n  restart_delay: 2min\n  restart_delay_max: 1min\n",
        "goodsd.yaml:5: supervisor.restart_delay_max: "
        "must be at least restart_delay (120s), got 60s",
    ),
    (
        MINIMAL + "supervisor:\n  restart_delay: 2min\n",
        "goodsd.yaml:4: supervisor.restart_delay: "
        "must not exceed restart_delay_max (60s), got 120s",
    ),
    (
        MINIMAL + "producer:\n  high_watermark: 0\n",
        "goodsd.yaml:4: producer.high_watermark: must be between 1 and 4294967295, got 0",
    ),
    (
        MINIMAL + "producer:\n  low_watermark: -1\n",
        "goodsd.yaml:4: producer.low_watermark: must be between 0 and 4294967294, got -1",
    ),
    (
        MINIMAL + "producer:\n  high_watermark: 100\n  low_watermark: 100\n",
        "goodsd.yaml:5: producer.low_watermark: must be below high_watermark (100), got 100",
    ),
    (
        MINIMAL + "producer:\n  high_watermark: 100\n",
        "goodsd.yaml:4: producer.high_watermark: must be above low_watermark (8000), got 100",
    ),
    # enums
    (
        MINIMAL + "  decode: latin-1\n",
        "goodsd.yaml:3: consumers.decode: must be one of utf-8, bytes, json, got 'latin-1'",
    ),
    (
        MINIMAL + "logging:\n  level: loud\n",
        "goodsd.yaml:4: logging.level: "
        "must be one of debug, info, warning, error, critical, got 'loud'",
    ),
    (
        MINIMAL + "logging:\n  format: xml\n",
        "goodsd.yaml:4: logging.format: must be one of text, json, got 'xml'",
    ),
    # queue name
    (MINIMAL + "queue: ''\n", "goodsd.yaml:3: queue: must not be empty"),
    (
        MINIMAL + 'queue: "q\\0"\n',
        "goodsd.yaml:3: queue: must not contain a NUL character",
    ),
    (
        MINIMAL + 'pythonpath: ["/srv\\0app"]\n',
        "goodsd.yaml:3: pythonpath: item 1: must not contain a NUL character",
    ),
    (
        'consumers:\n  command: [/bin/x, "a\\0b"]\n',
        "goodsd.yaml:2: consumers.command: argument 2: must not contain a NUL character",
    ),
    (
        MINIMAL + 'redis:\n  password_file: "/etc/pw\\0"\n',
        "goodsd.yaml:4: redis.password_file: must not contain a NUL character",
    ),
    (
        MINIMAL + "queue: 'my queue'\n",
        "goodsd.yaml:3: queue: must not contain whitespace, got 'my queue'",
    ),
    (
        MINIMAL + "queue: '{q}'\n",
        "goodsd.yaml:3: queue: "
        "must not contain '{' or '}' (goodsd adds its own hash tag), got '{q}'",
    ),
    # redis
    (
        MINIMAL + "redis:\n  url: http://h/0\n",
        "goodsd.yaml:4: redis.url: must start with redis://, rediss://, unix://, "
        "redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://",
    ),
    (
        MINIMAL + "redis:\n  url: unix://\n",
        "goodsd.yaml:4: redis.url: "
        "unix:// needs an absolute socket path, e.g. unix:///run/redis.sock",
    ),
    (
        MINIMAL + "redis:\n  url: unix://run/redis.sock\n",
        "goodsd.yaml:4: redis.url: "
        "unix:// needs an absolute socket path, e.g. unix:///run/redis.sock",
    ),
    (
        MINIMAL + "redis:\n  url: redis://\n",
        "goodsd.yaml:4: redis.url: needs a host, e.g. redis://127.0.0.1:6379/0",
    ),
    (
        MINIMAL + "redis:\n  url: redis://h:99999/0\n",
        "goodsd.yaml:4: redis.url: port must be a number between 0 and 65535",
    ),
    (
        MINIMAL + "redis:\n  url: redis://h/zero\n",
        "goodsd.yaml:4: redis.url: "
        "the path must be a database number, e.g. redis://127.0.0.1:6379/0",
    ),
    (MINIMAL + "redis:\n  url: 'redis://[::1'\n", "goodsd.yaml:4: redis.url: not a valid URL"),
    (
        MINIMAL + "redis:\n  url: unix:///run/redis.sock?socket_timeout=abc\n",
        "goodsd.yaml:4: redis.url: query parameter socket_timeout: set by goodsd",
    ),
    (
        MINIMAL + "redis:\n  url: 'redis:// 127.0.0.1'\n",
        "goodsd.yaml:4: redis.url: "
        "must not contain whitespace or control characters (percent-encode them, e.g. %20)",
    ),
    (
        MINIMAL + 'redis:\n  url: "redis://h/0\\t"\n',
        "goodsd.yaml:4: redis.url: "
        "must not contain whitespace or control characters (percent-encode them, e.g. %20)",
    ),
    (
        MINIMAL + "redis:\n  url: 'redis://:pa#ss@h/0'\n",
        "goodsd.yaml:4: redis.url: must not contain '#' (percent-encode it as %23)",
    ),
    (
        MINIMAL + "redis:\n  url: 'redis://h!x/0'\n",
        "goodsd.yaml:4: redis.url: the host must be a host name or an IP address",
    ),
    (
        MINIMAL + "redis:\n  url: 'redis://h/0?db=abc'\n",
        "goodsd.yaml:4: redis.url: query parameter db: must be a database number, e.g. db=0",
    ),
    (
        MINIMAL + "redis:\n  url: 'unix:///run/redis.sock?db=-1'\n",
        "goodsd.yaml:4: redis.url: query parameter db: must be a database number, e.g. db=0",
    ),
    (
        MINIMAL + "redis:\n  url: 'redis://h/0?password:hunter2'\n",
        "goodsd.yaml:4: redis.url: query parameter (a name not shown): not a setting redis-py "
        "reads from a URL",
    ),
    (
        MINIMAL + "pythonpath: [srv/app]\n",
        "goodsd.yaml:3: pythonpath: item 1: must be an absolute path (the service runs in /, "
        "where a relative one means nothing), got srv/app",
    ),
    (
        MINIMAL + "redis:\n  password_file: etc/pw\n",
        "goodsd.yaml:4: redis.password_file: must be an absolute path (the service runs in /, "
        "where a relative one means nothing), got etc/pw",
    ),
    (
        MINIMAL + "redis:\n  url: 'redis://h/0?colour=blue'\n",
        "goodsd.yaml:4: redis.url: query parameter colour: not a setting redis-py reads from a URL",
    ),
    (
        MINIMAL + "redis:\n  url: 'redis://h/0?ssl_certfile=/etc/c.pem'\n",
        "goodsd.yaml:4: redis.url: query parameter ssl_certfile: not taken by a redis:// "
        "connection",
    ),
    (
        MINIMAL + "redis:\n  url: 'redis://h/0?ssl_validate_ocsp=false'\n",
        "goodsd.yaml:4: redis.url: "
        "query parameter ssl_validate_ocsp: not a setting redis-py reads from a URL",
    ),
    (
        MINIMAL + "redis:\n  url: 'redis://h/0?client_name=x'\n",
        "goodsd.yaml:4: redis.url: query parameter client_name: set by goodsd",
    ),
    (
        MINIMAL + "redis:\n  url: 'redis://h/0?decode_responses=true'\n",
        "goodsd.yaml:4: redis.url: query parameter decode_responses: set by goodsd",
    ),
    (
        MINIMAL + "redis:\n  password_file: ''\n",
        "goodsd.yaml:4: redis.password_file: must not be empty",
    ),
    # metrics
    (
        MINIMAL + "metrics:\n  listen: localhost\n",
        "goodsd.yaml:4: metrics.listen: expected HOST:PORT such as 127.0.0.1:9464, got 'localhost'",
    ),
    (
        MINIMAL + "metrics:\n  listen: ':9464'\n",
        "goodsd.yaml:4: metrics.listen: expected HOST:PORT such as 127.0.0.1:9464, got ':9464'",
    ),
    (
        MINIMAL + "metrics:\n  listen: '[::1]'\n",
        "goodsd.yaml:4: metrics.listen: expected HOST:PORT such as 127.0.0.1:9464, got '[::1]'",
    ),
    (
        MINIMAL + "metrics:\n  listen: '::1:9464'\n",
        "goodsd.yaml:4: metrics.listen: "
        "put an IPv6 address in brackets, e.g. [::1]:9464, got '::1:9464'",
    ),
    (
        MINIMAL + "metrics:\n  listen: 'h:0'\n",
        "goodsd.yaml:4: metrics.listen: port must be between 1 and 65535, got '0'",
    ),
    (
        MINIMAL + "metrics:\n  listen: 'h:65536'\n",
        "goodsd.yaml:4: metrics.listen: port must be between 1 and 65535, got '65536'",
    ),
    (
        MINIMAL + "metrics:\n  listen: 'h:http'\n",
        "goodsd.yaml:4: metrics.listen: port must be between 1 and 65535, got 'http'",
    ),
    (
        MINIMAL + "metrics:\n  listen: 9464\n",
        "goodsd.yaml:4: metrics.listen: expected a string, got integer 9464",
    ),
    # handler / command exclusivity
    ("queue: q\nconsumers:\n  processes: 2\n", "goodsd.yaml:2: consumers: set handler or command"),
    ("", "goodsd.yaml: consumers: set handler or command"),
    ("# only a comment\n", "goodsd.yaml: consumers: set handler or command"),
    (
        "consumers:\n  handler: a:b\n  command: [x]\n",
        "goodsd.yaml:3: consumers.command: give either handler or command, not both",
    ),
    (
        "consumers:\n  command: [x]\n  handler: a:b\n",
        "goodsd.yaml:3: consumers.handler: give either handler or command, not both",
    ),
    (
        "consumers:\n  processes: 0\n  handler: a:b\n  command: [x]\n",
        "goodsd.yaml:4: consumers.command: give either handler or command, not both",
    ),
    (MINIMAL + "producer:\n  processes: 1\n", "goodsd.yaml:3: producer: set source or command"),
    (
        MINIMAL + "producer:\n  source: a:b\n  command: [tail]\n",
        "goodsd.yaml:5: producer.command: give either source or command, not both",
    ),
    # YAML itself
    (
        "consumers:\n  handler: a:b\n    batch: 1\n",
        "goodsd.yaml:3: invalid YAML: mapping values are not allowed here",
    ),
    (
        "consumers:\n  handler: a:b\n  batch: [1\n",
        "goodsd.yaml:3: invalid YAML: "
        "while parsing a flow sequence, expected ',' or ']', but got '<stream end>' "
        "(noticed on line 4)",
    ),
    (
        "a: 1\n---\nb: 2\n",
        "goodsd.yaml:2: invalid YAML: "
        "expected a single document in the stream (on line 1), but found another document",
    ),
    (
        "queue: q\n\x07\n",
        "goodsd.yaml:2: invalid YAML: character #x0007: special characters are not allowed",
    ),
    (
        "consumers:\n  handler: !!python/name:os.system\n",
        "goodsd.yaml:2: consumers.handler: "
        "invalid YAML: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/name:os.system'",
    ),
    (
        MINIMAL + "  batch: !!bool maybe\n",
        "goodsd.yaml:3: consumers.batch: invalid YAML value: KeyError: 'maybe'",
    ),
    (
        MINIMAL + "!!bool maybe: 1\n",
        "goodsd.yaml:3: invalid YAML value: KeyError: 'maybe'",
    ),
    (
        MINIMAL + "  batch: !!int ten\n",
        "goodsd.yaml:3: consumers.batch: "
        "invalid YAML value: ValueError: invalid literal for int() with base 10: 'ten'",
    ),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_error_message(text: str, message: str) -> None:
    # Given a file with one mistake
    # When it is parsed
    err = error_of(text)
    # Then the one-line message names file, line, key and reason
    assert str(err) == message
    assert "\n" not in str(err)


# Typical typos, each with the line the user has to fix: where the token that went wrong
# starts (a quote, a bracket, a key without ':'), not where PyYAML gave up on it.
SYNTAX_TYPOS = [
    # a key without its ':'
    ("queue: q\nconsumers\n  handler: a:b\n  batch: 1\n", 2, "could not find expected ':'"),
    ("consumers:\n  handler a:b\n  batch: 1\n", 2, "expected ':' after the key"),
    ("consumers:\n  batch: 1\n  handler a:b\n", 3, "could not find expected ':'"),
    ("consumers:\n  handler\n  batch: 1\nqueue: q\n", 2, "expected ':' after the key"),
    # unclosed quotes and brackets
    ('queue: "abc\nconsumers:\n  handler: a:b\n  batch: 1\n', 1, "quoted scalar"),
    ("queue: 'abc\nconsumers:\n  handler: a:b\n  batch: 1\n", 1, "quoted scalar"),
    ("consumers:\n  command: [a, b\n  batch: 1\nqueue: q\n", 2, "flow sequence"),
    ("consumers: {handler: a:b, batch: 1\nqueue: q\nlogging:\n  level: info\n", 1, "mapping"),
    ("consumers:\n  command: [a,\n    b,\n    c\n  batch: 1\nqueue: q\n", 2, "sequence"),
    # bad indentation: the line that is out of place
    ("consumers:\n  handler: a:b\n    batch: 1\nqueue: q\n", 3, "not allowed here"),
    ("consumers:\n  handler: a:b\n batch: 1\nqueue: q\n", 3, "expected <block end>"),
    ("consumers:\n  handler: a:b\n  - x\nqueue: q\n", 3, "expected <block end>"),
    ("consumers:\n\thandler: a:b\nqueue: q\n", 2, "found character '\\t'"),
    # stray characters
    ("consumers:\n  command: [a, b]]\nqueue: q\n", 2, "but found ']'"),
    ("consumers:\n  handler: 'a:b'c\n  batch: 1\n", 2, "expected <block end>"),
    ('queue: q\nx: "a\\qb"\ny: 1\n', 2, "unknown escape character 'q'"),
    ("queue: q\nx: a: b\ny: 1\n", 2, "not allowed here"),
    ("queue: q\nconsumers: *base\n", 2, "found undefined alias 'base'"),
]


@pytest.mark.parametrize(("text", "line", "says"), SYNTAX_TYPOS)
def test_yaml_syntax_error_names_the_line_to_fix(text: str, line: int, says: str) -> None:
    # Given a file with a typical typo
    # When it is parsed
    err = error_of(text)
    # Then the error names the line the typo is on, and what YAML found
    assert err.line == line, str(err)
    assert says in err.reason
    assert str(err).startswith(f"goodsd.yaml:{line}: invalid YAML: ")


def test_yaml_error_names_both_lines_when_they_differ() -> None:
    # Given a key without ':' that YAML notices only on the next line
    err = error_of("consumers:\n  handler a:b\n  batch: 1\n")
    # Then both lines are named: the one to fix, and the one where it was noticed
    assert str(err) == (
        "goodsd.yaml:2: invalid YAML: expected ':' after the key "
        "(noticed on line 3: mapping values are not allowed here)"
    )
    # And an unclosed quote is blamed where it opens
    err = error_of('queue: "abc\nconsumers:\n  handler: a:b\n')
    assert str(err) == (
        "goodsd.yaml:1: invalid YAML: while scanning a quoted scalar, "
        "found unexpected end of stream (noticed on line 4)"
    )


# --- nesting, aliases and other shapes that would exhaust PyYAML -------------------------------


@pytest.mark.parametrize("opening", ["[", "{a: ", "- "])
def test_deep_nesting_is_refused_before_it_is_composed(opening: str) -> None:
    # Given a value nested 300 levels deep (the example, and its block and mapping kin)
    if opening == "- ":
        deep = "".join(" " * (2 * level) + "-\n" for level in range(300))
        text = MINIMAL + "pythonpath:\n" + deep
    else:
        closing = {"[": "]", "{a: ": "}"}[opening]
        text = MINIMAL + "queue: " + opening * 300 + "x" + closing * 300 + "\n"
    # When it is parsed
    err = error_of(text)
    # Then it is a config error under its top-level key, not a RecursionError
    assert err.key in ("queue", "pythonpath")
    assert err.reason == f"nested deeper than {config.MAX_DEPTH} levels"
    assert err.line is not None and err.line >= 3


def test_nesting_at_the_limit_is_not_refused_for_depth() -> None:
    # Given a value nested exactly as deep as allowed (the root mapping is level 1)
    levels = config.MAX_DEPTH - 1
    err = error_of(MINIMAL + "queue: " + "[" * levels + "x" + "]" * levels + "\n")
    # Then only its type is wrong
    assert err.reason == "expected a string, got a list"


def test_aliases_count_towards_the_depth() -> None:
    # Given anchors that each nest the one before a little deeper
    lines = ["pythonpath:", "  - &a0 [x]"]
    lines += [f"  - &a{n} [[[*a{n - 1}]]]" for n in range(1, 20)]
    # When it is parsed
    err = error_of(MINIMAL + "\n".join(lines) + "\n")
    # Then the depth the aliases stand for is refused
    assert (err.key, err.reason) == ("pythonpath", f"nested deeper than {config.MAX_DEPTH} levels")


def test_merge_key_chains_are_refused_not_recursed() -> None:
    # Given a chain of merge keys, each merging the one before
    lines = ["pythonpath:", "  - &m0 {k: 1}"]
    lines += [f"  - &m{n} {{<<: *m{n - 1}}}" for n in range(1, 2000)]
    # When it is parsed
    err = error_of(MINIMAL + "\n".join(lines) + "\n")
    # Then it is refused for its depth
    assert err.reason == f"nested deeper than {config.MAX_DEPTH} levels"


def test_alias_expansion_bombs_are_refused() -> None:
    # Given the billion-laughs shape: each anchor is ten aliases of the one before
    lines = ["pythonpath:", "  - &l0 [lol]"]
    lines += [f"  - &l{n} [" + ", ".join([f"*l{n - 1}"] * 10) + "]" for n in range(1, 10)]
    lines += ["consumers:", "  <<: [" + ", ".join(["*l9"] * 10) + "]"]
    # When it is parsed
    err = error_of("\n".join(lines) + "\n")
    # Then it is refused as soon as the aliases stand for too much
    assert err.reason == (
        f"more than {config.MAX_VALUES} values (aliases counted as what they stand for)"
    )
    assert err.key == "pythonpath"


def test_a_file_with_too_many_values_is_refused_quickly() -> None:
    # Given a file well under the size limit but with a long list (PyYAML is slow per value)
    text = MINIMAL + "pythonpath: [" + "a, " * 100_000 + "a]\n"
    # When it is parsed
    started = time.monotonic()
    err = error_of(text)
    # Then it is refused once the limit is crossed, without reading the rest
    assert (err.line, err.key) == (3, "pythonpath")
    assert err.reason.startswith(f"more than {config.MAX_VALUES} values")
    assert time.monotonic() - started < 2


def test_recursive_alias_is_refused() -> None:
    err = error_of(MINIMAL + "pythonpath: &p [*p]\n")
    assert (err.line, err.key) == (3, "pythonpath")
    assert err.reason == "alias *p refers to a collection that contains it"


def test_a_few_aliases_still_work() -> None:
    # Given the everyday use of anchors: one value shared by two keys
    text = "consumers:\n  handler: a:b\n  timeout: &t 10s\n  retry_delay: *t\n"
    # Then it reads as safe_load would
    cfg = parse(text)
    assert (cfg.consumers.timeout, cfg.consumers.retry_delay) == (10.0, 10.0)


def test_messages_stay_one_short_line() -> None:
    # Given an unknown key with a line break and a value far too long to show
    err = error_of(MINIMAL + '"a\\nb": 1\n')
    assert str(err) == "goodsd.yaml:3: 'a\\nb': unknown key"
    err = error_of(MINIMAL + "queue: [" + "x" * 5000 + "]\n")
    assert str(err) == "goodsd.yaml:3: queue: expected a string, got a list"
    err = error_of(MINIMAL + "  decode: " + "x" * 5000 + "\n")
    assert len(str(err)) < 200


def test_config_keeps_the_line_of_each_key() -> None:
    # Given a file
    cfg = parse("queue: q\nconsumers:\n  handler: a:b\n  batch: 3\n")
    # Then the line of every key it sets is kept, for checks made after parsing
    assert cfg.lines == {"queue": 1, "consumers": 2, "consumers.handler": 3, "consumers.batch": 4}
    assert cfg.warnings == ()
    # And neither takes part in comparing configs
    assert cfg == parse("consumers:\n  batch: 3\n  handler: a:b\nqueue: q\n")


def test_error_parts_are_attributes() -> None:
    # Given the typo example
    err = error_of("consumers:\n  handler: a:b\n  procesess: 3\n")
    # Then the parts are available separately
    assert (err.path, err.line, err.key) == ("goodsd.yaml", 3, "consumers.procesess")
    assert err.reason == "unknown key (did you mean processes?)"


def test_error_without_line_or_key_and_pickling() -> None:
    # Given errors built by other modules
    err = ConfigError("/etc/goodsd.yaml", None, "", "cannot read: Permission denied")
    # Then the location parts that do not apply are left out, and it survives pickling
    assert str(err) == "/etc/goodsd.yaml: cannot read: Permission denied"
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_redis_url_error_never_shows_the_password() -> None:
    err = error_of(MINIMAL + "redis:\n  url: redis://:hunter2@h:99999/0\n")
    assert "hunter2" not in str(err)


def test_block_list_error_points_at_the_list() -> None:
    # Given a command written as a block list with a bad item
    err = error_of("consumers:\n  command:\n    - /bin/x\n    - 5\n")
    # Then the line is where the list starts
    assert (
        str(err)
        == "goodsd.yaml:3: consumers.command: every argument must be a string, got integer 5"
    )


def test_parse_listen_splits_host_and_port() -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    assert parse_listen("metrics.local:80") == ("metrics.local", 80)


# --- files and paths -------------------------------------------------------------------------


def test_load_reads_the_file_and_keeps_its_path(tmp_path) -> None:
    # Given a config file
    path = tmp_path / "goodsd.yaml"
    path.write_text(MINIMAL + "queue: orders\n")
    # When it is loaded
    cfg = config.load(str(path))
    # Then the values and the path are kept
    assert (cfg.queue, cfg.path) == ("orders", str(path))


def test_load_reports_errors_against_the_file(tmp_path) -> None:
    path = tmp_path / "goodsd.yaml"
    path.write_text("consumers:\n  handler: a:b\n  procesess: 3\n")
    with pytest.raises(ConfigError) as caught:
        config.load(str(path))
    assert (
        str(caught.value) == f"{path}:3: consumers.procesess: unknown key (did you mean processes?)"
    )


def test_missing_file_names_path_and_os_reason(tmp_path) -> None:
    # Given a path where no file exists
    missing = str(tmp_path / "nope.yaml")
    # When it is loaded
    with pytest.raises(ConfigError) as caught:
        config.load(missing)
    # Then the error names the path and the OS reason, without a line
    assert str(caught.value) == f"{missing}: cannot read: No such file or directory"
    assert caught.value.line is None


def test_directory_and_binary_files_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read: a directory, not a regular file"):
        config.load(str(tmp_path))
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"queue: q\xff\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 8\)"):
        config.load(str(binary))


@pytest.mark.parametrize(
    ("cli", "environ", "expected"),
    [
        ("/cli.yaml", {"GOODSD_CONFIG": "/env.yaml"}, "/cli.yaml"),
        (None, {"GOODSD_CONFIG": "/env.yaml"}, "/env.yaml"),
        (None, {"GOODSD_CONFIG": ""}, "/etc/goodsd.yaml"),
        (None, {}, "/etc/goodsd.yaml"),
    ],
)
def test_resolve_path_order(cli: str | None, environ: dict[str, str], expected: str) -> None:
    # Given -c and/or $GOODSD_CONFIG
    # Then -c wins, then the environment, then the default
    assert config.resolve_path(cli, environ) == expected


def test_dump_writes_text_that_parses_back() -> None:
    # Given a mapping with a value YAML would otherwise read as a boolean, and a list
    data = {
        "queue": "yes",
        "consumers": {"processes": 3, "handler": "app.tasks:handle"},
        "pythonpath": ["/srv/app"],
    }
    # When it is dumped
    text = config.dump(data)
    # Then the keys keep their order and parsing gives the same values back
    assert text.index("queue") < text.index("consumers") < text.index("pythonpath")
    cfg = parse(text, "dumped.yaml")
    assert (cfg.queue, cfg.consumers.processes, cfg.pythonpath) == ("yes", 3, ("/srv/app",))


def test_exit_code_for_bad_config_is_ex_config() -> None:
    assert EXIT_CONFIG == 78
