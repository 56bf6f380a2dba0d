"""Ask a bash completion script what it offers, as bash does when Tab is pressed: used on the
generated script (tests/unit/test_docgen.py) and on the one the package installs
(tests/integration/test_deb.py)."""

from __future__ import annotations

# Sources the script ($1), fills COMP_WORDS with the words after it (the last one being
# completed), calls shtab's function for goodsd and prints what it put in COMPREPLY.
PROGRAM = """
source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
COMPREPLY=()
_shtab_goodsd
printf "%s\\n" "${COMPREPLY[@]}"
"""


def completion_argv(script: str, *words: str) -> list[str]:
    """The command that prints what ``script`` offers after ``words``, one a line."""
    return ["bash", "--norc", "-c", PROGRAM, "bash", script, *words]


def offered(output: str) -> list[str]:
    """The output of completion_argv's command as a sorted list."""
    return sorted(line for line in output.splitlines() if line)
