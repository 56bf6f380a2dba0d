"""The README and the units point only at things a reader can reach.

The README is read on a checkout, on a package index and, once installed, as
/usr/share/doc/goodsd/README.md. A package index shows it without the repository beside it, and
PyPI's renderer gives its headings no ids, so a link to a file or to a heading would land
nowhere there: the README links absolute URLs only, and names its own sections in plain words
(see "Redis keys"), each the title of one of its headings. Every file it names must be one the
repository has. The systemd units name their documentation with `Documentation=`, in a form
systemd accepts.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from goodsd import exits

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
UNITS = sorted((ROOT / "packaging").glob("*.service"))
# The URL schemes systemd.unit(5) accepts in Documentation=.
DOC_SCHEMES = {"http", "https", "file", "info", "man"}
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[^\n]*$", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
# A relative path to a file, with a directory part (config/goodsd.yaml, ../shared/STYLE.md).
RELATIVE_PATH = re.compile(r"(?:\.\./)*(?:[\w.@-]+/)+[\w.@-]+\.[A-Za-z]+")
# A bare file name of the kind a README points readers to (DESIGN.md, sandbox.sh).
BARE_FILE = re.compile(r"[\w.@-]+\.(?:md|py|sh|toml)")


def prose_and_code(text: str) -> tuple[str, list[str]]:
    """``text`` without its fenced blocks, and the blocks' contents."""
    return FENCE.sub("", text), FENCE.findall(text)


def headings(text: str) -> set[str]:
    """The titles of ``text``'s headings, as plain words (code spans' backticks dropped)."""
    return {title.replace("`", "") for title in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def unknown_sections(text: str) -> list[str]:
    """Sections ``text`` names in words (see "X", in "X", of "X", under "X") that are none of
    its headings."""
    named = re.findall(r'\b(?:see|in|of|under)\s+"([^"]+)"', text)
    known = headings(text)
    return [name for name in (" ".join(n.split()) for n in named) if name not in known]


def links_that_do_not_travel(prose: str) -> list[str]:
    """Links of ``prose`` that are not absolute URLs: a heading of the page (PyPI gives
    headings no ids) or a relative path (no repository beside the README there)."""
    links = LINK.findall(CODE_SPAN.sub("", prose))
    return [t for t in links if urlsplit(t).scheme not in ("http", "https", "mailto")]


def unreachable_files(prose: str, code: list[str]) -> list[str]:
    """Relative file paths in code (inline or fenced) and bare file names in inline code
    that the repository does not have."""
    spans = CODE_SPAN.findall(prose)
    words = [word.strip("\"'(),;") for text in (*spans, *code) for word in text.split()]
    bad = [
        f"{word}: not in the repository"
        for word in words
        if RELATIVE_PATH.fullmatch(word) and not in_repository(word)
    ]
    names = {p.name for p in ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts}
    bad += [
        f"{span}: no file of that name in the repository"
        for span in spans
        if BARE_FILE.fullmatch(span) and span not in names
    ]
    return bad


def in_repository(path: str) -> bool:
    """Whether ``path`` (relative to the README) names something inside this checkout."""
    target = (ROOT / path).resolve()
    return target.is_relative_to(ROOT) and target.exists()


def documentation_urls(unit: Path) -> list[str]:
    """The URLs of every Documentation= line of ``unit`` (space-separated, several lines)."""
    lines = re.findall(r"^Documentation=(.*)$", unit.read_text(), re.M)
    return [url for line in lines for url in line.split()]


def test_the_readme_links_only_absolute_urls() -> None:
    # Given the README's prose, as PyPI and the package show it (links inside code are not
    # links)
    prose, _ = prose_and_code(README.read_text())
    # Then every link is an absolute URL
    assert links_that_do_not_travel(prose) == []


def test_every_section_the_readme_names_is_one_of_its_headings() -> None:
    assert unknown_sections(README.read_text()) == []


def test_the_readme_names_no_file_outside_the_repository() -> None:
    # Given the README, prose and code blocks
    prose, code = prose_and_code(README.read_text())
    # Then each relative path and each file it names is in this checkout
    assert unreachable_files(prose, code) == []


def test_the_checks_catch_what_a_reader_cannot_reach() -> None:
    # Given a README that links to a heading and a sibling project, names a section it lacks,
    # and names a file that only its authors have
    text = (
        "## Usage\n\nSee [usage](#usage), [style](../shared/STYLE.md) and [the site]"
        '(https://example.org/); see "Usage" and "Security", as in "Install".\n'
        "The design is in `DESIGN.md`, the rules in `../shared/RULES.md`; the config is "
        "`config/goodsd.yaml`, Debian/Ubuntu's is `/etc/redis/redis.conf`.\n"
        "```sh\ncp packaging/goodsd.service packaging/missing.service /etc/\n```\n"
    )
    prose, code = prose_and_code(text)
    # Then exactly those are reported
    assert links_that_do_not_travel(prose) == ["#usage", "../shared/STYLE.md"]
    assert unknown_sections(text) == ["Install"]
    assert unreachable_files(prose, code) == [
        "../shared/RULES.md: not in the repository",
        "packaging/missing.service: not in the repository",
        "DESIGN.md: no file of that name in the repository",
    ]


def test_every_unit_names_its_documentation_in_a_form_systemd_accepts() -> None:
    assert UNITS, "no units in packaging/"
    for unit in UNITS:
        urls = documentation_urls(unit)
        # Then each unit has Documentation= with URLs systemd takes (an absolute file: path)
        assert urls, f"{unit.name}: no Documentation="
        for url in urls:
            parts = urlsplit(url)
            assert parts.scheme in DOC_SCHEMES, f"{unit.name}: {url}: scheme not for systemd"
            if parts.scheme == "file":
                assert parts.path.startswith("/"), f"{unit.name}: {url}: not absolute"
                # And a file it points at is one this repository ships
                assert (ROOT / Path(parts.path).name).is_file(), f"{unit.name}: {url}"
    # And the template names the same as the plain unit
    assert len({tuple(documentation_urls(u)) for u in UNITS}) == 1


def test_the_exit_codes_table_says_what_goodsd_exits_says() -> None:
    # Given the README's "Exit codes" table, its code spans read as plain words
    section = README.read_text().split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.*) \|$", section, re.M)
    # Then it has every code with the meaning goodsd --help and goodsd(1) give it
    assert {int(code): meaning.replace("`", "") for code, meaning in rows} == exits.MEANINGS
