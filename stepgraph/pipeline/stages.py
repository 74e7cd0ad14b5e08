"""Wall time and peak resident memory of the stages of a long job.

``stepgraph train`` records its stages (read, graph, each training epoch,
embedding, clustering, write) with :class:`StageLog` and writes them to
``summary.json``, so that the time and memory of a whole job can be read
stage by stage.
"""

from __future__ import annotations

import resource
import time
from contextlib import contextmanager

__all__ = ["StageLog", "reset_peak_rss", "peak_rss_mb"]


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS counter (Linux >= 4.0); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb(resettable: bool) -> float:
    """This process's peak resident memory in MiB: since the last :func:`reset_peak_rss`
    when ``resettable`` (Linux's ``VmHWM``), else since the process started.
    """
    if resettable:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class StageLog:
    """Seconds and peak resident memory (MiB) per named stage.

    On Linux the peak is that of the stage itself (the kernel's high-water
    mark is reset when a stage starts); elsewhere it is the process's peak so
    far.

    Examples
    --------
    >>> log = StageLog()
    >>> with log.stage("graph"):
    ...     pass
    >>> [row["stage"] for row in log.rows]
    ['graph']
    """

    def __init__(self):
        self.rows: list[dict] = []
        self._epoch_start: float | None = None

    @contextmanager
    def stage(self, name: str):
        """Time the ``with`` block as stage ``name``."""
        resettable = reset_peak_rss()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.rows.append(
                {"stage": name, "seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(resettable)}
            )

    # --- epochs, through the Trainer's writer hook -------------------------
    def start_epochs(self) -> None:
        """Start the clock of the first epoch (then pass this log as ``writer=``)."""
        reset_peak_rss()
        self._epoch_start = time.perf_counter()
        self._epoch = None

    def add_scalar(self, tag: str, value, step: int) -> None:
        """The Trainer's end-of-epoch hook: the first call of an epoch closes it."""
        if self._epoch_start is None or step == self._epoch:
            return
        now = time.perf_counter()
        self.rows.append(
            {"stage": f"epoch {step}", "seconds": now - self._epoch_start, "peak_rss_mb": peak_rss_mb(True)}
        )
        self._epoch = step
        reset_peak_rss()
        self._epoch_start = time.perf_counter()
