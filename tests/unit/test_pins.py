"""The pins of packaging/pins/ (what the Debian package bundles, and builds its completion
with) cover what pyproject.toml asks for, at versions it allows, each with its hashes.

packaging/pins/update.sh writes them; the package build installs exactly them (pip
--require-hashes) and fails its `pip check` if one is missing. This finds that earlier.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PINS = ROOT / "packaging" / "pins"
# One requirement with its continuation lines: "name==version \\\n    --hash=sha256:...".
PIN = re.compile(r"^([\w.-]+)==(\S+)((?: \\\n    --hash=sha256:[0-9a-f]{64})+)$", re.M)


def pins(name: str) -> dict[str, Version]:
    """canonical name -> pinned version, of packaging/pins/``name``; every requirement line of
    the file must be a hashed pin."""
    text = (PINS / name).read_text()
    requirements = [line for line in text.splitlines() if line and line[0].isalnum()]
    found = {canonicalize_name(n): Version(v) for n, v, _ in PIN.findall(text)}
    assert len(found) == len(requirements), f"{name}: a line without ==version or a hash"
    return found


def wanted(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return [Requirement(line) for line in lines]


def test_the_bundle_pins_every_dependency_at_a_version_goodsd_takes() -> None:
    bundle = pins("bundle.txt")
    for requirement in [*wanted(), *wanted("metrics")]:
        name = canonicalize_name(requirement.name)
        assert name in bundle, f"{name} is not pinned: run packaging/pins/update.sh"
        assert requirement.specifier.contains(bundle[name]), (requirement, bundle[name])
        # and the extras goodsd asks of it (redis[hiredis])
        for extra in requirement.extras:
            assert canonicalize_name(extra) in bundle, f"{name}[{extra}]"


def test_the_completion_is_made_with_a_shtab_the_tests_take() -> None:
    (shtab,) = [r for r in wanted("test") if r.name == "shtab"]
    assert shtab.specifier.contains(pins("docgen.txt")["shtab"])
