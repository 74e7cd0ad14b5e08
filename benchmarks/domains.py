"""Spatial domains on an annotated tissue: stepgraph's pipeline vs the
neighbour-mean and the non-spatial (PCA + k-means) baselines, several seeds.

The same as ``stepgraph bench domains``; by default on the shared real tissue
(Visium DLPFC 151510, 500 genes), one thread per run. Prints a markdown table
(median [min, max] over seeds) and writes benchmarks/results/domains.{json,md}.
With ``--batch-key`` and several sections the table gives the joint ARI, the
mean ARI within each section and the sections' mixing score side by side, e.g.
on the four DLPFC sections (``../shared/data/real/dlpfc_donor3_4sections.h5ad
--batch-key section``).

    python benchmarks/domains.py [FILE.h5ad --truth-key KEY --batch-key KEY --seeds 0,1,2]
"""

from __future__ import annotations

import sys
from pathlib import Path

from stepgraph.cli import main

DEFAULT_FILE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real" / "dlpfc151510_drsc500.h5ad"
RESULTS = Path(__file__).resolve().parent / "results" / "domains"

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0].startswith("-") and args[0] not in ("-h", "--help"):
        args = [str(DEFAULT_FILE.resolve()), "--truth-key", "domain", *args]
    if "--out" not in args:
        args += ["--out", str(RESULTS)]
    sys.exit(main(["bench", "domains", *args]))
