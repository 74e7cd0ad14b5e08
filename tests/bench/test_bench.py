"""``stepgraph bench``: the benchmark scripts run for real at the tiny size."""

import json

import pytest

from stepgraph.bench.suite import SIZES, run_benchmarks
from stepgraph.cli import build_parser, main


def test_bench_tiny_writes_json_markdown_and_plot(tmp_path, capsys):
    # two scripts keep the test short: a scaling one (the plot, the squidpy
    # anchor) and the trainer's overhead (the bare-loop anchor)
    status = main(["bench", "--size", "tiny", "--only", "graph_build,trainer_overhead", "--out", str(tmp_path)])
    assert status == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "bench.json").read_text())
    env = report["environment"]
    assert env["torch_threads"] == 1 and env["usable_cores"] >= 1
    assert env["versions"]["torch"] != "not installed"
    assert set(report["benchmarks"]) == {"graph_build", "trainer_overhead"}
    graph = report["benchmarks"]["graph_build"][0]
    assert graph["status"] == "ok"
    assert [row["cells"] for row in graph["results"]["results"]] == [2000, 4000]
    overhead = report["benchmarks"]["trainer_overhead"][0]["results"]
    assert {row["loop"] for row in overhead["rows"]} == {"bare", "trainer"}
    markdown = (tmp_path / "bench.md").read_text()
    assert "| bare loop |" in markdown and "measured in this run" in markdown
    squidpy = report["anchors"]["squidpy"]["status"]
    assert "| squidpy | `graph_build`" in markdown and squidpy in markdown
    assert "| method | cells |" in markdown  # the script's own table
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_bench_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmarks"):
        run_benchmarks("tiny", tmp_path, only=["nope"])
    with pytest.raises(ValueError, match="size must be one of"):
        run_benchmarks("huge", tmp_path)
    with pytest.raises(FileNotFoundError, match="bench_dir"):
        run_benchmarks("tiny", tmp_path, bench_dir=tmp_path)
    # every size names the same scripts, and sub-commands can sit beside the suite
    assert all(set(sizes) == set(SIZES["small"]) for sizes in SIZES.values())
    args = build_parser().parse_args(["bench", "--size", "small"])
    assert args.command == "bench" and args.bench_command is None
