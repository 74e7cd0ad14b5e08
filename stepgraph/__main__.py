"""``python -m stepgraph``: the same as the ``stepgraph`` command."""

import os
import signal
import sys


def run() -> int:
    """The ``stepgraph`` command (its console entry point): :func:`stepgraph.cli.main`.

    The command's libraries are imported here, under handlers that turn Ctrl-C
    and SIGTERM into one line and exit status 130 or 143, as they are later (an
    extension module interrupted while it loads may report an ``ImportError``
    instead: the signal, not that error, is what counts).
    """
    received = []

    def on_signal(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        from stepgraph.cli import main
    except BaseException:
        if not received:
            raise
        what = "terminated (SIGTERM)" if received[0] == signal.SIGTERM else "interrupted"
        print(f"stepgraph: {what}", file=sys.stderr, flush=True)
        os._exit(143 if received[0] == signal.SIGTERM else 130)  # nothing started: nothing to clean up
    for signum, handler in previous.items():
        signal.signal(signum, handler)
    return main()


if __name__ == "__main__":
    sys.exit(run())
