"""Process titles: what `ps`, `top` and `systemctl status` show for each goodsd process, so
the process tree tells what is what::

    goodsd: master -c /etc/goodsd.yaml
    goodsd: consumer 2 [goods2]
    goodsd: producer 0 [goods2]

Set through setproctitle, which rewrites the process's argv area (``/proc/<pid>/cmdline``)
and its short name (``/proc/<pid>/comm``, cut to 15 bytes by Linux).
"""

from __future__ import annotations

import os

import setproctitle

PREFIX = "goodsd: "


def master_title(config_path: str) -> str:
    """The master's title, naming its config file by absolute path. The queue is left out:
    a reload may change it, while the file is the instance's identity for its whole life."""
    return f"{PREFIX}master -c {os.path.abspath(config_path)}"


def child_title(role: str, index: int, queue: str) -> str:
    """A child's title: its role, its slot (as in the log lines) and the queue it works on."""
    return f"{PREFIX}{role} {index} [{queue}]"


def set_title(title: str) -> None:
    """Show ``title`` for this process from now on."""
    setproctitle.setproctitle(title)
