"""The sdist and the wheel are complete, and build offline with Debian 12's own setuptools.

Built from a copy of this checkout with the system's /usr/bin/python3 and python3-build,
without build isolation (no download: setuptools is the distribution's, 66 on Debian 12), as
packaging/build-deb.sh builds them. Skips where the system has no python3-build.
"""

from __future__ import annotations

import email
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from goodsd import __version__

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import build, setuptools"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"{SYSTEM_PYTHON} has no build or setuptools (apt-get install python3-build)")
    work = tmp_path_factory.mktemp("dist")
    skip = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, work / "tree", ignore=shutil.ignore_patterns(*skip))
    result = subprocess.run(
        [SYSTEM_PYTHON, "-m", "build", "--no-isolation", "--outdir", str(work / "out")],
        cwd=work / "tree",
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # And no complaint about the project's configuration (a deprecated or refused key)
    assert "deprecated" not in (result.stdout + result.stderr).lower()
    return work / "out"


def test_the_sdist_carries_what_the_packages_are_built_from(dist: Path) -> None:
    with tarfile.open(dist / f"goodsd-{__version__}.tar.gz") as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for wanted in (
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "config/goodsd.yaml",
        "packaging/goodsd.service",
        "packaging/goodsd@.service",
        "packaging/goodsd.sysusers",
        "packaging/docgen.py",
        "packaging/build-deb.sh",
        "packaging/debian/control",
        "packaging/debian/rules",
        "packaging/grafana/goodsd.json",
        "tests/unit/test_config.py",
        "tests/integration/test_deb.py",
        "tests/systemd/sandbox.sh",
    ):
        assert wanted in names, wanted


def test_the_wheel_has_its_license_metadata_and_data_files(dist: Path) -> None:
    with zipfile.ZipFile(dist / f"goodsd-{__version__}-py3-none-any.whl") as wheel:
        names = set(wheel.namelist())
        info = f"goodsd-{__version__}.dist-info"
        metadata = email.message_from_bytes(wheel.read(f"{info}/METADATA"))
    assert any(name.startswith(info) and name.endswith("LICENSE") for name in names)
    assert metadata["License"] == "MIT"
    assert metadata["Author-email"] and metadata["Maintainer-email"]
    urls = metadata.get_all("Project-URL") or []
    assert {url.split(",")[0] for url in urls} >= {"Homepage", "Changelog", "Issues"}
    classifiers = metadata.get_all("Classifier") or []
    assert "Operating System :: POSIX :: Linux" in classifiers
    # And the README it shows on a package index links no file of the repository
    assert "](config/" not in metadata.get_payload()
    # And an install from the wheel has the units and the example config
    data = f"goodsd-{__version__}.data/data/share/goodsd"
    for name in ("goodsd.service", "goodsd@.service", "goodsd.sysusers", "goodsd.yaml"):
        assert f"{data}/{name}" in names, name
