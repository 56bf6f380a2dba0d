"""Fuzz the config parser with malformed files made from the shipped example.

Whatever the text, `parse` either returns a Config or raises ConfigError whose message is one
line shaped `path:line: key: reason` or `path: reason`, with a line inside the file. Anything
else (RecursionError, KeyError, OverflowError, a hang) is a bug: `check`, `run`, a reload and
every ops command read the file through it.

The cases are generated from a fixed seed, so a failure names a case that can be replayed:
`make_case(random.Random(SEED + number))`.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from goodsd import config
from goodsd.config import Config, ConfigError

EXAMPLE = (Path(__file__).resolve().parents[2] / "config" / "goodsd.yaml").read_text()
# Only the lines that hold keys: the comments make every parse slower and are rarely mutated
# into anything interesting.
BASE = "\n".join(line for line in EXAMPLE.splitlines() if not line.lstrip().startswith("#"))
SEED = 20240808
CASES = 3000
PATH = "fuzz.yaml"
SHAPE = re.compile(r"fuzz\.yaml(?::(?P<line>\d+))?: \S.*")

# Characters YAML gives meaning to, and some it refuses.
SPECIAL = [*":-[]{},&*!|>'\"%@`#?<= \t\n", "\x00", "\x07", "\ufeff", "\u2028", "\x85"]
HUGE = [
    "9" * 30,
    "99999999999999999999999999d",
    "0x" + "f" * 600,
    "0b" + "1" * 3000,
    "1e999",
    "-.inf",
    ".nan",
    "9" * 5000,
    "1" + "0" * 400 + "s",
]
TAGS = ["!!int", "!!float", "!!bool", "!!binary", "!!timestamp", "!!set", "!!omap", "!!str"]


def lines_of(text: str) -> list[str]:
    return text.split("\n")


def delete_chars(rng: random.Random, text: str) -> str:
    start = rng.randrange(len(text))
    return text[:start] + text[start + rng.randint(1, 8) :]


def insert_chars(rng: random.Random, text: str) -> str:
    at = rng.randrange(len(text) + 1)
    return text[:at] + "".join(rng.choices(SPECIAL, k=rng.randint(1, 4))) + text[at:]


def duplicate_chars(rng: random.Random, text: str) -> str:
    start = rng.randrange(len(text))
    piece = text[start : start + rng.randint(1, 40)]
    at = rng.randrange(len(text) + 1)
    return text[:at] + piece * rng.randint(1, 3) + text[at:]


def swap_lines(rng: random.Random, text: str) -> str:
    lines = lines_of(text)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


def reindent_line(rng: random.Random, text: str) -> str:
    lines = lines_of(text)
    i = rng.randrange(len(lines))
    lines[i] = " " * rng.choice([0, 1, 3, 4, 8]) + lines[i].lstrip()
    return "\n".join(lines)


def replace_value(rng: random.Random, text: str) -> str:
    """A key's value becomes something hostile: huge numbers, tags, deep or odd collections."""
    lines = lines_of(text)
    keyed = [i for i, line in enumerate(lines) if re.match(r"\s*\w+:\s*\S", line)]
    i = rng.choice(keyed)
    key = lines[i].split(":", 1)[0]
    depth = rng.choice([5, 31, 32, 40, 300])
    value = rng.choice(
        [
            rng.choice(HUGE),
            f"{rng.choice(TAGS)} {rng.choice(['x', '1', '', 'maybe', '2001-13-45', '!!!'])}",
            "[" * depth + "x" + "]" * depth,
            "{a: " * depth + "x" + "}" * depth,
            "*nowhere",
            "&a [*a]",
            "{<<: 1}",
            "{<<: [1, 2]}",
            '"' + "\\u0000" + '"',
            "'" + "x" * 3000 + "'",
            "{? [a, b] : c}",
            "[{}, [], null, ~, true]",
        ]
    )
    lines[i] = f"{key}: {value}"
    return "\n".join(lines)


def add_anchors(rng: random.Random, text: str) -> str:
    """Anchors, aliases and merge keys: chains, fan-outs and merges of merges."""
    count = rng.choice([2, 10, 40])
    fan = rng.choice([1, 2, 10])
    lines = ["pythonpath:", "  - &x0 {k: v}"]
    for n in range(1, count):
        refs = ", ".join([f"*x{n - 1}"] * fan)
        lines.append(rng.choice([f"  - &x{n} [{refs}]", f"  - &x{n} {{<<: [{refs}]}}"]))
    section = rng.choice(["consumers", "producer", "supervisor"])
    extra = f"{section}:\n  <<: *x{count - 1}\n"
    return "\n".join(lines) + "\n" + extra + re.sub(r"(?m)^pythonpath:.*$", "", text)


def random_bytes(rng: random.Random, text: str) -> str:
    at = rng.randrange(len(text) + 1)
    noise = bytes(rng.randrange(256) for _ in range(rng.randint(1, 30)))
    return text[:at] + noise.decode("latin-1") + text[at:]


MUTATIONS: list[Callable[[random.Random, str], str]] = [
    delete_chars,
    insert_chars,
    duplicate_chars,
    swap_lines,
    reindent_line,
    replace_value,
    add_anchors,
    random_bytes,
]


# Hostile values reach the value checks only in a file that is otherwise well-formed, so that
# mutation is drawn more often than the ones that mostly break the syntax.
WEIGHTS = [1, 1, 1, 1, 1, 4, 1, 1]


def make_case(rng: random.Random) -> str:
    text = BASE
    for _ in range(rng.randint(1, 3)):
        text = rng.choices(MUTATIONS, WEIGHTS)[0](rng, text)
    return text


def check_outcome(text: str) -> None:
    try:
        result = config.parse(text, PATH)
    except ConfigError as err:
        message = str(err)
        assert "\n" not in message and "\r" not in message, message
        match = SHAPE.fullmatch(message)
        assert match, message
        assert err.path == PATH
        if err.line is not None:
            assert match["line"] == str(err.line)
            assert 1 <= err.line <= text.count("\n") + 2, message
        assert len(message) < 400, message
    else:
        assert isinstance(result, Config)


def test_the_unmutated_example_is_valid() -> None:
    assert isinstance(config.parse(BASE, PATH), Config)
    assert isinstance(config.parse(EXAMPLE, PATH), Config)


def test_malformed_configs_give_config_errors_only() -> None:
    # Given a few thousand seeded mutations of the example config
    started = time.monotonic()
    for number in range(CASES):
        text = make_case(random.Random(SEED + number))
        # When each is parsed
        # Then it is a Config or a one-line ConfigError, never anything else
        try:
            check_outcome(text)
        except Exception as exc:
            pytest.fail(f"case {number}: {type(exc).__name__}: {exc}\n--- text ---\n{text[:2000]}")
    assert time.monotonic() - started < 30, "the fuzz run got slow: parse may have a hot spot"


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.__name__)
def test_each_mutation_is_exercised(mutation: Callable[[random.Random, str], str]) -> None:
    # Each kind on its own, so a failure points at the kind
    for number in range(50):
        check_outcome(mutation(random.Random(SEED - number), BASE))
