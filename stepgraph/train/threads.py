"""How many CPU threads torch uses: chosen from the CPUs this process may use.

Torch's default is one intra-op thread per core of the machine. On a shared
node that oversubscribes the cores as soon as two jobs run: every job spins
a thread per core, the threads fight over the same cores, and a job that
takes 20 s alone took 1,361 s beside ten others on 2 cores. The policy here:

1. an explicit request (``--threads``, :func:`apply_thread_policy`'s
   ``requested``) wins;
2. else ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``, when the user set them;
3. else the CPUs this process may run on (``os.sched_getaffinity``, which
   honours ``taskset``, cgroups' cpusets and schedulers' allocations), less
   the ones other processes keep busy right now (the running-task count of
   ``/proc/loadavg``), never below 1.

Rule 3 is read when the run starts: jobs that start together each see the
others' start-up as busy CPUs and take fewer threads. ``stepgraph info``
prints what the policy would choose now.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import cast

from stepgraph._validation import check_int

__all__ = ["ThreadChoice", "apply_thread_policy", "choose_threads", "usable_cpus"]


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count chosen and why, as ``stepgraph info`` prints it."""

    threads: int
    reason: str

    def __str__(self) -> str:
        return f"{self.threads} ({self.reason})"


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity, else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _busy_cpus() -> int:
    """Runnable tasks other than this one, from ``/proc/loadavg`` (0 where unknown)."""
    try:
        with open("/proc/loadavg") as fh:
            running = int(fh.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0
    return max(running - 1, 0)


def choose_threads(requested: int | None = None) -> ThreadChoice:
    """The number of torch threads to use, and the reason (see the module's policy).

    Parameters
    ----------
    requested
        Threads asked for explicitly (an int >= 1); ``None`` applies the policy.
    """
    if requested is not None:
        return ThreadChoice(cast(int, check_int(requested, "threads", minimum=1)), "requested")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) >= 1:
            return ThreadChoice(int(value), f"{name}={value}")
    usable = usable_cpus()
    busy = _busy_cpus()
    threads = max(1, min(usable, usable - busy))
    return ThreadChoice(threads, f"{usable} usable CPUs, {busy} busy with other tasks")


def apply_thread_policy(requested: int | None = None) -> ThreadChoice:
    """:func:`choose_threads`, then set the choice for torch; returns the
    :class:`ThreadChoice` that was set.
    """
    choice = choose_threads(requested)
    import torch

    torch.set_num_threads(choice.threads)
    return choice
