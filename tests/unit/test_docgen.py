"""The generated man pages and completion cover what the code defines (goodsd.docgen).

They are generated at build time from the argparse parser and the config schema; these tests
make sure that nothing the code has is left out: every command, option, exit code, environment
variable and config key, and that the pages are roff that man reads without a warning.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bash_completion import completion_argv, offered

from goodsd import cli, config, docgen, exits

ROOT = Path(__file__).resolve().parents[2]


def plain(page: str) -> str:
    """Roff source as the words a reader sees: font changes dropped, escapes undone."""
    text = re.sub(r"\\f[BIRP]", "", page)
    return text.replace("\\-", "-").replace("\\&", "").replace("\\e", "\\")


def every_parser() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    parser = cli.build_parser()
    return [((), parser), *((words, sub) for words, sub, _ in docgen.commands(parser))]


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pages")
    assert docgen.main([str(out)]) == 0
    return out


def test_goodsd_1_has_every_command_and_option(pages: Path) -> None:
    # Given goodsd(1) as generated from the parser
    text = plain((pages / "goodsd.1").read_text())
    for words, parser in every_parser():
        # Then each command has its own subsection, with its description
        if words:
            assert f".SS {' '.join(words)}\n" in text, words
        if parser.description:
            assert " ".join(parser.description.split()) in " ".join(text.split()), words
        # And every option and positional argument of it is there
        for action in docgen.options(parser):
            for name in action.option_strings or [action.metavar or action.dest]:
                assert name in text, (words, name)


def test_every_command_help_says_what_it_does_and_its_exit_codes() -> None:
    for words, parser in every_parser():
        # Then every command's --help has a description and an exit status list
        assert parser.description, f"goodsd {' '.join(words)}: no description"
        assert "exit status:" in (parser.epilog or ""), f"goodsd {' '.join(words)}: no exit codes"
        # And it lists at least success and usage errors (argparse's own exit 2)
        helped = parser.format_help()
        assert re.search(r"^  0 ", helped, re.M) and re.search(r"^  2 ", helped, re.M), words


def test_goodsd_1_has_every_exit_code_environment_variable_and_file(pages: Path) -> None:
    text = plain((pages / "goodsd.1").read_text())
    # Then every exit code goodsd.exits defines is explained
    codes = {v for k, v in vars(exits).items() if k.startswith("EXIT_")}
    assert codes == set(exits.MEANINGS)
    exit_section = text.split(".SH EXIT STATUS", 1)[1].split(".SH ", 1)[0]
    for code in codes:
        assert f".TP\n{code}\n" in exit_section, code
    # And every environment variable the code reads is in ENVIRONMENT
    environment = text.split(".SH ENVIRONMENT", 1)[1].split(".SH ", 1)[0]
    for name in environment_variables_read():
        assert name in environment, name
    # And the config paths are in FILES
    assert config.DEFAULT_PATH in text.split(".SH FILES", 1)[1]


def test_every_command_lists_the_exit_codes_of_goodsd_exits() -> None:
    # Then each command's --help lists exactly what goodsd.exits says for it, one code a line
    commands = {" ".join(words): parser for words, parser in every_parser() if words}
    assert set(commands) == set(exits.COMMANDS)
    for name, parser in [("", cli.build_parser()), *commands.items()]:
        meanings = exits.COMMANDS[name] if name else exits.MEANINGS
        listed = re.findall(r"^  (\d+) ", parser.epilog or "", re.M)
        assert listed == [str(code) for code in sorted(meanings)], name
        help_text = " ".join(parser.format_help().split())
        for meaning in meanings.values():
            assert " ".join(meaning.split()) in help_text, (name, meaning)


def environment_variables_read() -> set[str]:
    """Names goodsd's code reads from the environment: environ.get("X"), environ["X"] (not
    an assignment to it) and every GOODSD_ name."""
    names = set()
    for path in (ROOT / "goodsd").rglob("*.py"):
        source = path.read_text()
        found = re.findall(
            r"environ(?:\.get\(\s*\"([A-Z_]+)\"|\[\s*\"([A-Z_]+)\"\](?!\s*=))", source
        )
        names.update(name for pair in found for name in pair if name)
        names.update(re.findall(r"\"(GOODSD_[A-Z_]+)\"", source))
    return names


def test_environment_scan_finds_what_goodsd_reads() -> None:
    assert {"GOODSD_CONFIG", "GOODSD_REDIS_PASSWORD", "NOTIFY_SOCKET"} <= (
        environment_variables_read()
    )


def test_goodsd_yaml_5_has_every_key_with_type_default_and_meaning(pages: Path) -> None:
    text = plain((pages / "goodsd.yaml.5").read_text())
    meanings = docgen.readme_meanings((ROOT / "README.md").read_text())
    for info in config.described_keys():
        # Then each key of the schema has a README meaning and says what it takes
        assert meanings.get(info.key), f"{info.key}: no row in the README's Configuration table"
        assert info.kind, f"{info.key}: its parser does not say what it takes (config._kind)"
        # And the page has its entry: the key, the meaning, what it takes and its default
        entry = text.split(f".TP\n{info.key}\n", 1)
        assert len(entry) == 2, info.key
        body = entry[1].split(".TP\n", 1)[0]
        assert f"Takes: {info.kind}." in body, info.key
        assert f"Default: {docgen.default_text(info.default)}." in body, info.key
    # And the README names no key the schema lacks
    assert set(meanings) == {info.key for info in config.described_keys()}


def test_every_key_says_what_values_it_takes() -> None:
    # Then no key reads as the fallback of a parser without words of its own (config._kind):
    # "a value, or null" says nothing of what to write
    vague = [(i.key, i.kind) for i in config.described_keys() if "a value" in i.kind]
    assert vague == []
    # And redis.url names every form a URL may take
    (url,) = [i.kind for i in config.described_keys() if i.key == "redis.url"]
    for scheme in ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://"):
        assert scheme in url, scheme


def test_defaults_are_shown_as_the_file_would_write_them() -> None:
    assert docgen.default_text(None) == "null (not set)"
    assert docgen.default_text(()) == "[]"
    assert docgen.default_text(False) == "false"
    assert docgen.default_text(30.0) == "30s"
    assert docgen.default_text(4) == "4"


@pytest.mark.skipif(shutil.which("man") is None, reason="man (man-db) is not installed")
@pytest.mark.parametrize("name", ["goodsd.1", "goodsd.yaml.5"])
def test_man_reads_the_pages_without_a_warning(pages: Path, name: str) -> None:
    # When man formats the page with its warnings on (as lintian does)
    result = subprocess.run(
        ["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(pages / name)],
        capture_output=True,
        text=True,
        env={"LC_ALL": "C.UTF-8", "MANWIDTH": "80", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    # Then it formats without complaint
    assert result.returncode == 0 and result.stderr == "", result.stderr


def bash_complete(script: Path, cwd: Path, *words: str) -> list[str]:
    """What the bash completion offers after ``words`` (the last one being completed)."""
    result = subprocess.run(
        completion_argv(str(script), *words), cwd=cwd, capture_output=True, text=True, check=True
    )
    return offered(result.stdout)


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion_offers_commands_options_and_config_files(
    pages: Path, tmp_path: Path
) -> None:
    script = pages / "goodsd.bash"
    # Given a directory with a YAML file and another file
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "orders.yaml").write_text("")
    (tmp_path / "conf" / "notes.txt").write_text("")
    # Then the commands, a command's sub-commands and its options are offered
    commands = [words[0] for words, _ in every_parser() if len(words) == 1]
    assert bash_complete(script, tmp_path, "goodsd", "") == sorted(commands)
    assert bash_complete(script, tmp_path, "goodsd", "dead", "") == ["list", "purge", "requeue"]
    assert "--import-timeout" in bash_complete(script, tmp_path, "goodsd", "check", "--")
    # And -c offers config files only, before or after the command
    assert bash_complete(script, tmp_path, "goodsd", "-c", "conf/") == ["conf/orders.yaml"]
    assert bash_complete(script, tmp_path, "goodsd", "status", "-c", "conf/") == [
        "conf/orders.yaml"
    ]
    # And --as-user offers users
    assert "root" in bash_complete(script, tmp_path, "goodsd", "check", "--as-user", "ro")


def test_zsh_completion_names_every_command(pages: Path) -> None:
    text = (pages / "_goodsd").read_text()
    assert text.startswith("#compdef goodsd")
    for words, _ in every_parser():
        if words:
            assert words[-1] in text, words


def test_man_dir_puts_the_pages_where_man_looks(tmp_path: Path) -> None:
    # When the pages are generated for an install by hand
    assert docgen.main(["--man-dir", str(tmp_path)]) == 0
    # Then they are in the sections' directories, and nothing else is written
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "man1/goodsd.1",
        "man5/goodsd.yaml.5",
    ]


def test_the_source_tree_script_writes_the_same_pages(tmp_path: Path) -> None:
    # When packaging/docgen.py runs from another directory, as a script
    result = subprocess.run(
        [sys.executable, str(ROOT / "packaging" / "docgen.py"), "--man-dir", str(tmp_path)],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Then it writes what goodsd.docgen writes
    assert result.returncode == 0, result.stderr
    for section, name, text in docgen.man_pages():
        assert (tmp_path / section / name).read_text() == text


def test_the_readme_is_the_source_trees_and_else_the_installed_copy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given goodsd imported from this tree, the tree's README is the one
    assert docgen.readme_path() == ROOT / "README.md"
    # Given goodsd installed from a wheel (no pyproject.toml beside the package), the copy the
    # wheel put under sys.prefix is
    installed = tmp_path / "site-packages" / "goodsd" / "docgen.py"
    monkeypatch.setattr(docgen, "__file__", str(installed))
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    copy = tmp_path / "share" / "goodsd" / "README.md"
    copy.parent.mkdir(parents=True)
    copy.write_text("# goodsd\n")
    assert docgen.readme_path() == copy
