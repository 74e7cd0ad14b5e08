"""Progress of long work (graph building, training, embedding) for terminals and for logs.

The only place in stepgraph that draws progress. On a terminal a :mod:`tqdm`
bar is shown. When the stream is not a terminal (CI, a log file, a cluster
job) a bar would fill the log with carriage returns, so one plain line is
written every ``interval`` seconds instead, plus one at the end. A
:class:`Progress` is a counter that its owner updates: it never iterates a
loader itself (so it draws nothing from a loader's random generator).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator

__all__ = ["Progress", "track", "TrackedLoader"]


class Progress:
    """A progress counter: a bar on a terminal, a line every ``interval`` seconds otherwise.

    Parameters
    ----------
    total
        Units of work in all (cells, batches, epochs); ``None`` when unknown.
    desc
        What is being done, e.g. ``"graph"``.
    unit
        Name of a unit, e.g. ``"cells"``.
    enabled
        ``False`` shows nothing.
    interval
        Seconds between two plain lines when the stream is not a terminal.
    stream
        Where to write (default: ``sys.stderr``, as tqdm).
    initial
        Units already done (a resumed run).
    leave
        Keep the terminal bar once closed.
    final_line
        Write a last plain line when closed (off a terminal).

    Examples
    --------
    >>> import io
    >>> log = io.StringIO()
    >>> with Progress(3, "epochs", "epoch", stream=log) as progress:
    ...     for _ in range(3):
    ...         progress.update()
    >>> log.getvalue().startswith("epochs: 3/3 epoch (100%)")
    True
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        enabled: bool = True,
        interval: float = 10.0,
        stream=None,
        initial: int = 0,
        leave: bool = False,
        final_line: bool = True,
    ):
        self.total = None if total is None else int(total)
        self.desc, self.unit, self.interval = desc, unit, float(interval)
        self.enabled = bool(enabled)
        self.stream = stream if stream is not None else sys.stderr
        self.done = int(initial)
        self.postfix, self.final_line = "", final_line
        self._start = self._last = time.monotonic()
        self._bar = None
        isatty = getattr(self.stream, "isatty", None)
        if self.enabled and isatty is not None and isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total,
                initial=self.done,
                desc=desc,
                unit=unit,
                file=self.stream,
                dynamic_ncols=True,
                leave=leave,
            )

    def set_description(self, desc: str) -> None:
        """Say what is being done now (e.g. ``"Epoch 3/20"``)."""
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc, refresh=False)

    def set_postfix(self, text: str) -> None:
        """Text shown after the count (e.g. the running losses)."""
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line()

    def close(self) -> None:
        """End: close the bar, or write the last plain line."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.final_line:
            self._line()
        self.enabled = False

    def _line(self) -> None:
        elapsed = time.monotonic() - self._start
        count = f"{self.done:,}" if self.total is None else f"{self.done:,}/{self.total:,}"
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        postfix = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {count} {self.unit}{share}, {elapsed:.0f} s{postfix}", file=self.stream, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def track(
    iterable: Iterable,
    total: int | None,
    desc: str,
    unit: str = "it",
    enabled: bool = True,
    interval: float = 10.0,
    stream=None,
) -> Iterator:
    """Iterate over ``iterable`` (once, as the caller would), counting one unit per item
    (see :class:`Progress`).
    """
    with Progress(total, desc, unit, enabled, interval, stream) as progress:
        for item in iterable:
            yield item
            progress.update()


class TrackedLoader:
    """A loader whose iteration is tracked; every other attribute is the loader's own
    (so :meth:`~stepgraph.Trainer.predict_gloader` can read ``data``).
    """

    def __init__(self, loader, desc: str, enabled: bool = True, interval: float = 10.0):
        self._loader, self._desc, self._enabled, self._interval = loader, desc, enabled, interval

    def __iter__(self):
        return track(self._loader, len(self._loader), self._desc, "batches", self._enabled, self._interval)

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name):
        return getattr(self._loader, name)
