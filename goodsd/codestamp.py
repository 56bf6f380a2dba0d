"""Which files of code a worker loaded, and whether they changed on disk since: how a reload
knows to deploy new handler code.

The master never imports handlers. Each child, once its handler (or source) and setup are
loaded, reports the files of every module it loaded after the fork, with a stamp of each
(inode, size, modification time in ns: an edit in place changes the time, a deploy that
replaces the file changes the inode). On a reload the master stats those files again; if any
differs, the role's children are rolled like for a changed setting. The standard library is
left out (it changes only with Python itself, which needs a restart anyway), and so is
goodsd's own code, which the master loaded before forking.
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig
from collections.abc import Iterable, Mapping

Stamp = tuple[int, int, int]  # (st_ino, st_size, st_mtime_ns)

_STDLIB = tuple(
    os.path.join(path, "")
    for path in {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
)


def stamp_of(path: str) -> Stamp | None:
    """The file's stamp now; None when it cannot be read (gone, say)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def loaded_since(before: Iterable[str]) -> dict[str, Stamp]:
    """Files (absolute paths) of the modules loaded since ``before`` (names of
    ``sys.modules`` then), outside the standard library, with their stamps."""
    known = set(before)
    files: dict[str, Stamp] = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name in known or not isinstance(path, str) or path.startswith(_STDLIB):
            continue
        stamp = stamp_of(path)
        if stamp is not None:
            files[os.path.abspath(path)] = stamp
    return files


def changed(files: Mapping[str, Stamp]) -> list[str]:
    """The files whose stamp is not what it was when they were loaded."""
    return [path for path, stamp in files.items() if stamp_of(path) != tuple(stamp)]


def encode(files: Mapping[str, Stamp]) -> str:
    """One line (JSON) for the child's event pipe."""
    return json.dumps(files, separators=(",", ":"))


def decode(text: str) -> dict[str, Stamp]:
    """What ``encode`` wrote; anything else gives an empty manifest (nothing to compare)."""
    try:
        raw = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    return {
        path: (stamp[0], stamp[1], stamp[2])
        for path, stamp in raw.items()
        if isinstance(stamp, list) and len(stamp) == 3 and all(isinstance(n, int) for n in stamp)
    }
