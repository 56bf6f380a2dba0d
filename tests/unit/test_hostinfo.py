"""The one home of process facts: signal names, and how a command is tied to its parent.

These run real tiny commands (setpriv, the interpreter): the parent-death signal is the
kernel's, and only a real process can show it has one.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from goodsd.hostinfo import parent_death_command, signal_name

# Prints the calling process's parent-death signal (PR_GET_PDEATHSIG is 2).
SHOW_PDEATHSIG = """
import ctypes
value = ctypes.c_int()
ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(value), 0, 0, 0)
print(value.value)
"""


@pytest.mark.parametrize(
    ("signum", "name"),
    [(signal.SIGKILL, "SIGKILL"), (signal.SIGTERM, "SIGTERM"), (15, "SIGTERM"), (99, "signal 99")],
)
def test_signal_name(signum: int, name: str) -> None:
    assert signal_name(signum) == name


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_parent_death_command_runs_with_that_signal_set(signum: int) -> None:
    # Given a command that shows its own parent-death signal
    argv = parent_death_command([sys.executable, "-c", SHOW_PDEATHSIG], signum)
    # When it runs
    shown = subprocess.run(argv, capture_output=True, check=True, text=True).stdout
    # Then the kernel holds the signal for it, set without any code of ours in the child
    assert int(shown) == signum


def test_without_setpriv_commands_cannot_be_tied_to_their_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a PATH without setpriv
    monkeypatch.setenv("PATH", str(tmp_path))
    # Then no command is started unsupervised: the command cannot be made, saying what is missing
    with pytest.raises(FileNotFoundError, match=r"setpriv \(util-linux\) not found"):
        parent_death_command(["true"], signal.SIGKILL)
