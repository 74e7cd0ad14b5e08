"""The version comes from git metadata: a tagged checkout installs as that version."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    not (ROOT / ".git").exists() or shutil.which("git") is None, reason="needs a git checkout of the repository and git"
)
def test_a_tag_becomes_the_installed_version(tmp_path):
    pytest.importorskip("setuptools_scm")
    clone = tmp_path / "clone"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(git + ["clone", "-q", "--no-local", str(ROOT), str(clone)], check=True)
    subprocess.run(git + ["-C", str(clone), "tag", "-a", "v9.9.9", "-m", "test release"], check=True)
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(clone),
        ],
        check=True,
        capture_output=True,
    )
    read = (
        "import sys; sys.path.insert(0, sys.argv[1]); import importlib.metadata as m; "
        "import stepgraph; print(m.version('stepgraph'), stepgraph.__version__, stepgraph.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", read, str(target)], check=True, capture_output=True, text=True
    ).stdout.split()
    assert out[:2] == ["9.9.9", "9.9.9"] and out[2].startswith(str(target))


def test_the_changelog_names_the_release_being_prepared():
    import re

    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    entries = re.findall(r"^## \[([^\]]+)\]", changelog, flags=re.MULTILINE)
    assert entries and entries[0] != "Unreleased", entries  # the top entry names a version
    assert re.fullmatch(r"\d+\.\d+\.\d+", entries[0])
