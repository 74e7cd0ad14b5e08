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

from stepgraph.train.callbacks import Callback

__all__ = ["StageLog", "EpochTimer", "reset_peak_rss", "peak_rss_mb"]


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

    def epoch_timer(self) -> EpochTimer:
        """A Trainer callback that records each training epoch as a stage ``"epoch N"``."""
        return EpochTimer(self)


class EpochTimer(Callback):
    """Trainer callback: each epoch's seconds and peak memory, as rows of a :class:`StageLog`.

    Parameters
    ----------
    log
        The log that receives one row per epoch.
    """

    def __init__(self, log: StageLog):
        self.log = log
        self._resettable = False
        self._start = time.perf_counter()

    def _restart(self) -> None:
        self._resettable = reset_peak_rss()
        self._start = time.perf_counter()

    def on_fit_start(self, trainer) -> None:
        self._restart()

    def on_epoch_end(self, trainer, metrics) -> None:
        seconds = time.perf_counter() - self._start
        epoch = int(metrics.get("epoch", len(self.log.rows)))
        self.log.rows.append(
            {"stage": f"epoch {epoch}", "seconds": seconds, "peak_rss_mb": peak_rss_mb(self._resettable)}
        )
        self._restart()
