"""Spatial domains on annotated tissues: stepgraph's pipeline beside its untrained
input, the neighbour-mean and non-spatial baselines, BANKSY and CellCharter (where
installed: make bench-deps), several seeds, one table per tissue and a rank per method.

The same as ``stepgraph bench domains``; by default on the shared development panel
(``../shared/data/real/``, five real tissues, keys read from the files), one thread
per run. Writes benchmarks/results/domains.{json,md}.

    python benchmarks/domains.py [FILES_OR_FOLDERS ...] [--seeds 0,1,2] [--jobs 2] [--methods ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from stepgraph.cli import main

DEFAULT_PANEL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"
RESULTS = Path(__file__).resolve().parent / "results" / "domains"

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0].startswith("-") and args[0] not in ("-h", "--help"):
        args = [str(DEFAULT_PANEL.resolve()), *args]
    if "--out" not in args:
        args += ["--out", str(RESULTS)]
    sys.exit(main(["bench", "--threads", "1", "domains", *args]))
