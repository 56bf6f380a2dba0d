"""Generate goodsd's man pages and shell completion from the code's own definitions.

    python -m goodsd.docgen OUTDIR             writes all of the below into OUTDIR
    python -m goodsd.docgen --man-dir DIR      the man pages into DIR/man1 and DIR/man5
                                               (an install by hand; needs no shtab)

with the goodsd this interpreter imports (/opt/goodsd/bin/python: the installed one) and its
dependencies; a source tree runs it as ``python packaging/docgen.py`` too. The files:

- ``goodsd.1``: every command and option from the argparse parser (goodsd.cli.build_parser),
  with each command's description and exit codes (its --help epilog); the exit codes of
  goodsd.exits; signals, environment and files.
- ``goodsd.yaml.5``: every config key from the schema (config.described_keys: type, default,
  range), its meaning from the README's "Configuration" table (see readme_path).
- ``goodsd.bash`` and ``_goodsd``: bash and zsh completion made by shtab from the same parser:
  commands, options, config files (``*.yaml``) for ``-c``, users for ``--as-user``, groups for
  ``--group``.

The pages are built at package build time from whatever the parser and schema hold then, so a
new option or key appears without editing this file; tests/unit/test_docgen.py checks that
every command, option and key is there. shtab is needed for the completion only, and is never
a runtime dependency: the package build installs it beside the build (packaging/debian/rules).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from goodsd import __version__, cli, config, exits

EXAMPLE = "/usr/share/doc/goodsd/examples/goodsd.yaml"
# The date on the pages: the source's, so that a rebuild of one version gives the same pages
# (SOURCE_DATE_EPOCH, as Debian's build sets it), else today.
SOURCE_DATE = "SOURCE_DATE_EPOCH"

SIGNALS = [
    (
        "TERM, INT",
        "Graceful stop: the consumers finish their current item within "
        "supervisor.graceful_timeout, unstarted items go back to the queue, stragglers are "
        "killed and their items requeued. A second one kills every child at once.",
    ),
    (
        "HUP",
        "Re-read the config file: resize the pools, roll the children whose settings or code "
        "changed (new ones up before old ones go). A file that does not validate is refused and "
        "the old config keeps running. systemctl reload sends it.",
    ),
    ("TTIN, TTOU", "One consumer more, or one fewer, until the next reload."),
    ("CHLD", "Reap the child, requeue its items, restart it with a growing delay."),
]
SIGNALS_CHILDREN = (
    "Children ignore HUP, INT, TTIN and TTOU and die with the master. A child takes every TERM "
    "as: finish the current item, give back the rest, exit."
)

ENVIRONMENT = [
    ("GOODSD_CONFIG", "The config file when no -c PATH is given (default /etc/goodsd.yaml)."),
    (
        "GOODSD_REDIS_PASSWORD",
        "The Redis password, when neither redis.password_file nor the systemd credential "
        "redis-password gives one. Children drop it before they load any user code.",
    ),
    (
        "CREDENTIALS_DIRECTORY",
        "Set by systemd (LoadCredential=): goodsd reads the password from the credential "
        "redis-password in it. Commands that goodsd starts do not inherit it.",
    ),
    ("NOTIFY_SOCKET", "Set by systemd (Type=notify): the master reports READY=1, STATUS= etc."),
    ("WATCHDOG_USEC, WATCHDOG_PID", "Set by systemd (WatchdogSec=): the master pings in time."),
    (
        "JOURNAL_STREAM",
        "Set by systemd: when stderr is the journal, each line carries its priority instead of "
        "a time stamp.",
    ),
]

FILES = [
    ("/etc/goodsd.yaml", "The config file of goodsd.service (root:goodsd 0640)."),
    ("/etc/goodsd/NAME.yaml", "The config file of goodsd@NAME.service, one more pool."),
    ("/opt/goodsd", "The program: a virtualenv with goodsd and its Python dependencies."),
    (
        "/lib/systemd/system/goodsd.service, goodsd@.service",
        "The units. Local settings go in a drop-in (systemctl edit goodsd), never in the "
        "units, which an upgrade replaces.",
    ),
    ("/usr/lib/sysusers.d/goodsd.conf", "The system user and group goodsd."),
    (EXAMPLE, "The example config: every key with its default and a comment."),
    ("/usr/share/doc/goodsd/README.md", "The full manual."),
]


# --- roff ------------------------------------------------------------------------------------


def roff(text: str) -> str:
    """``text`` safe in roff: backslashes and dashes escaped, no line starting with a control
    character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n")
    )


def markdown_inline(text: str) -> str:
    """A README table cell as roff: `code` in bold, links as their text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    parts = re.split(r"`([^`]*)`", text)
    return "".join(roff(p) if i % 2 == 0 else f"\\fB{roff(p)}\\fR" for i, p in enumerate(parts))


def header(name: str, section: int, title: str) -> list[str]:
    stamp = datetime.datetime.fromtimestamp(
        int(os.environ.get(SOURCE_DATE, "0")) or datetime.datetime.now().timestamp(),
        datetime.UTC,
    ).strftime("%Y-%m-%d")
    return [
        f'.\\" Generated by goodsd.docgen from goodsd {__version__}; do not edit.',
        f'.TH {name.upper()} {section} "{stamp}" "goodsd {__version__}" "goodsd"',
        # no hyphenation, ragged right: keys, paths and URLs stay whole and searchable
        ".nh",
        ".ad l",
        ".SH NAME",
        f"{roff(name)} \\- {roff(title)}",
    ]


def tagged(tag: str, text: str) -> list[str]:
    return [".TP", tag, roff(text)]


# --- goodsd(1) -------------------------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction]:
    return [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """Every command and sub-command: (its words, its parser, its one-line help)."""
    for action in subcommands(parser):
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        for name, sub in action.choices.items():
            yield (*path, name), sub, helps.get(name, "")
            yield from commands(sub, (*path, name))


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """A parser's options and positional arguments, without sub-command choosers."""
    return [a for a in parser._actions if not isinstance(a, argparse._SubParsersAction)]


def option_tag(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"\\fI{roff(action.metavar or action.dest)}\\fR"
    metavar = ""
    if action.nargs != 0:
        metavar = f" \\fI{roff(str(action.metavar or action.dest.upper()))}\\fR"
        if action.nargs == "?":
            metavar = f" [{metavar.strip()}]"
    return ", ".join(f"\\fB{roff(flag)}\\fR{metavar}" for flag in action.option_strings)


def option_lines(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for action in options(parser):
        text = action.help or ""
        if action.default not in (None, False, [], argparse.SUPPRESS) and "default" not in text:
            text += f" (default {action.default:g})" if isinstance(action.default, float) else ""
        lines += [".TP", option_tag(action), roff(text.replace("%%", "%"))]
    return lines


def epilog_lines(parser: argparse.ArgumentParser) -> list[str]:
    """A command's epilog: its exit codes as a tagged list, any other line as a paragraph."""
    lines = []
    for line in (parser.epilog or "").splitlines():
        code, _, meaning = line.strip().partition(" ")
        if line.startswith("  ") and code.isdigit():
            lines += tagged(f"\\fB{code}\\fR", meaning.strip())
        elif line.strip() == "exit status:":
            lines += [".PP", "Exit status:"]
        elif line.strip():
            lines += [".PP", roff(line.strip())]
    return lines


def usage(parser: argparse.ArgumentParser) -> str:
    text = " ".join(parser.format_usage().split())
    return text.removeprefix("usage: ")


def goodsd_1(parser: argparse.ArgumentParser) -> str:
    lines = header("goodsd", 1, "a supervised pool of worker processes for a Redis list")
    lines += [".SH SYNOPSIS", "\\fBgoodsd\\fR [\\fB\\-c\\fR \\fIPATH\\fR] \\fICOMMAND\\fR ..."]
    for _, sub, _ in commands(parser):
        if not subcommands(sub):
            lines += [".br", roff(usage(sub))]
    lines += [".SH DESCRIPTION", roff(parser.description or "")]
    lines += [
        ".PP",
        roff(
            "Every command but demo reads the config file: -c PATH (before or after the "
            f"command; one after it wins), else $GOODSD_CONFIG, else {config.DEFAULT_PATH}. "
            "Its keys are in goodsd.yaml(5). Errors are one line on stderr, "
            "'goodsd: <what>: <why>'. python -m goodsd works the same as goodsd."
        ),
        ".SH OPTIONS",
        *option_lines(parser),
        ".SH COMMANDS",
    ]
    for words, sub, summary in commands(parser):
        lines += [".SS " + roff(" ".join(words)), roff(summary.capitalize() + ".")]
        lines += [".PP", roff(usage(sub))]
        if sub.description:
            lines += [".PP", roff(sub.description)]
        lines += [".PP", "Options:", ".RS", *option_lines(sub), ".RE"]
        lines += epilog_lines(sub)
    lines += [".SH EXIT STATUS"]
    for code, meaning in sorted(exits.MEANINGS.items()):
        lines += tagged(f"\\fB{code}\\fR", meaning)
    lines += [".SH SIGNALS", "To the master:"]
    for names, meaning in SIGNALS:
        lines += tagged(f"\\fB{roff(names)}\\fR", meaning)
    lines += [".PP", roff(SIGNALS_CHILDREN), ".SH ENVIRONMENT"]
    for name, meaning in ENVIRONMENT:
        lines += tagged(f"\\fB{roff(name)}\\fR", meaning)
    lines += [".SH FILES"]
    for path, meaning in FILES:
        lines += tagged(f"\\fI{roff(path)}\\fR", meaning)
    lines += [
        ".SH EXAMPLES",
        ".nf",
        roff("goodsd check --as-user goodsd --group redis && systemctl reload goodsd"),
        roff("goodsd push good1 good2 good3"),
        roff("tail -F feed.log | goodsd push --wait-below 10000"),
        roff("goodsd status --watch"),
        roff("goodsd dead list --limit 5"),
        roff("goodsd -c /etc/goodsd/orders.yaml dead requeue --all"),
        ".fi",
        ".SH SEE ALSO",
        "\\fBgoodsd.yaml\\fR(5), \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1), "
        "\\fBredis\\-server\\fR(1), /usr/share/doc/goodsd/README.md",
    ]
    return "\n".join(lines) + "\n"


# Where an installed goodsd finds the README: a wheel puts it in <prefix>/share/goodsd/ (the
# data files of pyproject.toml), the Debian package in /usr/share/doc/goodsd/.
INSTALLED_READMES = ("share/goodsd/README.md", "/usr/share/doc/goodsd/README.md")


def readme_path() -> Path:
    """The README that goes with this goodsd: the source tree's, when goodsd is imported from
    one (a clone, an unpacked sdist: the README beside pyproject.toml), else the installed
    copy (INSTALLED_READMES, relative to sys.prefix first). Raises FileNotFoundError."""
    tree = Path(__file__).resolve().parents[1]
    candidates = [tree / "README.md"] if (tree / "pyproject.toml").is_file() else []
    candidates += [Path(sys.prefix) / name for name in INSTALLED_READMES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "no README.md with the config keys' meanings in " + ", ".join(map(str, candidates))
    )


# --- goodsd.yaml(5) --------------------------------------------------------------------------


def readme_meanings(text: str) -> dict[str, str]:
    """Key -> meaning, from the rows of the README's "Configuration" table."""
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([\w.]+)` \| (.*?) \| (.*) \|$", section, re.M)
    # the README's cross-references do not hold in a man page
    return {key: meaning.replace(" (see below)", "") for key, _, meaning in rows}


def sentence(text: str) -> str:
    """A table cell as a sentence: a capital first letter, a full stop at the end."""
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "...")) else text + "."


def default_text(value: object) -> str:
    if value is None:
        return "null (not set)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[]" if not value else "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, float):
        return f"{value:g}s"
    return str(value)


def goodsd_yaml_5(meanings: dict[str, str]) -> str:
    lines = header("goodsd.yaml", 5, "the configuration file of goodsd")
    lines += [
        ".SH SYNOPSIS",
        f"\\fI{config.DEFAULT_PATH}\\fR, \\fI/etc/goodsd/NAME.yaml\\fR",
        ".SH DESCRIPTION",
        roff(
            "goodsd reads a YAML file: -c PATH, else $GOODSD_CONFIG, else "
            f"{config.DEFAULT_PATH}. Every key is optional and has a default, but with "
            "consumers.processes above 0 exactly one of consumers.handler and consumers.command "
            "must be set (for producers, producer.source and producer.command). Unknown keys, "
            "wrong types and out-of-range values are refused with the file, the line and the "
            "key: goodsd check finds them before a reload does."
        ),
        ".PP",
        roff(
            'Durations are systemd-style spans (500ms, 30s, 5min, 1h, "1min 30s") or plain '
            "seconds. Only a regular file of at most 1 MiB, nested at most 32 levels, with at "
            "most 10,000 values, is read. A reload (systemctl reload goodsd, or SIGHUP) applies "
            "a changed file; a file that does not validate is refused and the old config keeps "
            "running."
        ),
        ".SH KEYS",
        "Each key is written as its dotted path: \\fBconsumers.batch\\fR is \\fBbatch:\\fR "
        "inside \\fBconsumers:\\fR.",
    ]
    section = ""
    for info in config.described_keys():
        top = info.key.split(".")[0] if "." in info.key else ""
        if top != section:
            section = top
            lines += [".SS " + roff(section)]
        lines += [
            ".TP",
            f"\\fB{roff(info.key)}\\fR",
            markdown_inline(sentence(meanings.get(info.key, ""))),
            ".br",
            f"Takes: {roff(info.kind)}. Default: \\fB{roff(default_text(info.default))}\\fR.",
        ]
    lines += [
        ".SH EXAMPLE",
        ".nf",
        "redis:",
        "  url: unix:///run/redis/redis\\-server.sock",
        "queue: orders",
        "pythonpath: [/srv/orders]",
        "consumers:",
        "  processes: 8",
        "  handler: tasks:handle",
        "  timeout: 2min",
        "metrics:",
        '  listen: "127.0.0.1:9464"',
        ".fi",
        ".PP",
        f"{roff(EXAMPLE)} has every key with its default and a comment.",
        ".SH FILES",
        *tagged(f"\\fI{config.DEFAULT_PATH}\\fR", "goodsd.service's config (root:goodsd 0640)."),
        *tagged("\\fI/etc/goodsd/NAME.yaml\\fR", "goodsd@NAME.service's config."),
        ".SH SEE ALSO",
        "\\fBgoodsd\\fR(1), /usr/share/doc/goodsd/README.md",
    ]
    return "\n".join(lines) + "\n"


# --- completion ------------------------------------------------------------------------------

# bash functions the completion calls for option values; each prints candidates for "$1".
BASH_PREAMBLE = """
_goodsd_config_files() {
  compgen -d -S / -- "$1"
  compgen -f -X '!*.yaml' -- "$1"
  compgen -f -X '!*.yml' -- "$1"
}
_goodsd_users() { compgen -u -- "$1"; }
_goodsd_groups() { compgen -g -- "$1"; }
"""
VALUE_COMPLETION = {
    "--config": {"bash": "_goodsd_config_files", "zsh": "_files -g '*.(yaml|yml)'"},
    "--pidfile": {"bash": "_shtab_compgen_files", "zsh": "_files"},
    "--logfile": {"bash": "_shtab_compgen_files", "zsh": "_files"},
    "--as-user": {"bash": "_goodsd_users", "zsh": "_users"},
    "--group": {"bash": "_goodsd_groups", "zsh": "_groups"},
}


def completion(parser: argparse.ArgumentParser, shell: str) -> str:
    import shtab

    for sub in (parser, *(p for _, p, _ in commands(parser))):
        for action in sub._actions:
            for flag in action.option_strings:
                if flag in VALUE_COMPLETION:
                    action.complete = VALUE_COMPLETION[flag]  # type: ignore[attr-defined]
    preamble = {"bash": BASH_PREAMBLE} if shell == "bash" else {}
    return shtab.complete(parser, shell=shell, preamble=preamble)


def main(argv: list[str]) -> int:
    """Write the files ``argv`` asks for (see the module's docstring); the exit status."""
    if len(argv) == 2 and argv[0] == "--man-dir":
        man = Path(argv[1])
        for section, name, text in man_pages():
            (man / section).mkdir(parents=True, exist_ok=True)
            (man / section / name).write_text(text)
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for _, name, text in man_pages():
        (out / name).write_text(text)
    (out / "goodsd.bash").write_text(completion(cli.build_parser(), "bash"))
    (out / "_goodsd").write_text(completion(cli.build_parser(), "zsh"))
    return 0


def man_pages() -> list[tuple[str, str, str]]:
    """goodsd(1) and goodsd.yaml(5): (section directory, file name, roff text) each."""
    meanings = readme_meanings(readme_path().read_text())
    return [
        ("man1", "goodsd.1", goodsd_1(cli.build_parser())),
        ("man5", "goodsd.yaml.5", goodsd_yaml_5(meanings)),
    ]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
