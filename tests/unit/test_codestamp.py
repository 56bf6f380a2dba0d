"""Code stamps: which files a worker loaded and whether they changed on disk since."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from goodsd import codestamp


def test_an_edit_or_a_replacement_is_a_change_and_nothing_else_is(tmp_path: Path) -> None:
    edited, replaced, kept, gone = (tmp_path / n for n in ("a.py", "b.py", "c.py", "d.py"))
    for path in (edited, replaced, kept, gone):
        path.write_text("X = 1\n")
    files = {str(p): codestamp.stamp_of(str(p)) for p in (edited, replaced, kept, gone)}
    # When one file is edited in place (same size), one replaced by a new file, one removed
    os.utime(edited, ns=(0, os.stat(edited).st_mtime_ns + 1))
    new = tmp_path / "b.new"
    new.write_text("X = 1\n")
    new.replace(replaced)
    gone.unlink()
    # Then those three have changed, and the untouched one has not
    assert sorted(codestamp.changed(files)) == sorted(str(p) for p in (edited, replaced, gone))


def test_loaded_since_names_new_modules_outside_the_standard_library(tmp_path: Path) -> None:
    (tmp_path / "stamped_module.py").write_text("VALUE = 1\n")
    before = set(sys.modules)
    sys.path.insert(0, str(tmp_path))
    try:
        import wave  # noqa: F401 - a standard library module, left out

        import stamped_module  # noqa: F401
    finally:
        sys.path.remove(str(tmp_path))
    files = codestamp.loaded_since(before)
    assert list(files) == [str(tmp_path / "stamped_module.py")]


def test_a_manifest_survives_the_event_pipe_and_garbage_gives_none() -> None:
    files = {"/srv/a.py": (1, 2, 3), "/srv/b c.py": (4, 5, 6)}
    assert codestamp.decode(codestamp.encode(files)) == files
    assert "\n" not in codestamp.encode(files)
    for garbage in ("", "[]", "{", '{"a": [1, 2]}', '{"a": "x"}'):
        assert codestamp.decode(garbage) == {}
