"""What the wheel ships: every subpackage, the benchmarks and the type marker."""

from pathlib import Path

import pytest
from setuptools import find_packages

from stepgraph.bench.suite import installed_benchmarks

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_list_names_every_subpackage_and_the_benchmarks():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(find_packages(str(ROOT), include=["stepgraph*"]))
    assert set(config["packages"]) == found | {"stepgraph._benchmarks"}
    assert config["package-dir"]["stepgraph._benchmarks"] == "benchmarks"
    assert (ROOT / "stepgraph" / "py.typed").is_file()


def test_the_benchmarks_are_found_through_the_installed_package():
    found = installed_benchmarks()
    assert (found / "_common.py").is_file() and (found / "graph_build.py").is_file()
