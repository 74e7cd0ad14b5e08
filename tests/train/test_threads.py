"""The thread policy: an explicit request, then the user's environment, then the free CPUs."""

import os
import subprocess
import sys

import pytest

from stepgraph.train.threads import choose_threads, usable_cpus


def test_a_request_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    choice = choose_threads(2)
    assert (choice.threads, choice.reason) == (2, "requested")


def test_the_users_omp_num_threads_is_honoured(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads().threads == 3


def test_the_policy_stays_within_the_usable_cpus(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    choice = choose_threads()
    assert 1 <= choice.threads <= usable_cpus()
    assert "usable CPUs" in choice.reason


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_a_bad_request_names_the_argument(bad):
    with pytest.raises((TypeError, ValueError), match="threads"):
        choose_threads(bad)


def test_the_command_line_sets_the_threads_before_the_run(tmp_path):
    """``--threads 1`` reaches torch in a real process, over the user's OMP_NUM_THREADS=2 (the
    demo's runner is replaced by one that prints torch's thread count)."""
    script = (
        "import torch, stepgraph.cli as cli\n"
        "cli._run_demo = lambda args: print('threads', torch.get_num_threads()) or 0\n"
        "raise SystemExit(cli.main(['demo', '--threads', '1', '--out', r'%s']))\n" % (tmp_path / "o")
    )
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["threads", "1"]
