"""``python -m stepgraph``: the same as the ``stepgraph`` command."""

import sys

from stepgraph.cli import main

sys.exit(main())
