"""The benchmark harness behind ``stepgraph bench`` and ``stepgraph info``.

- :mod:`~stepgraph.bench.environment`: versions, cores and threads, gathered once;
- :mod:`~stepgraph.bench.suite`: every script of ``benchmarks/`` at one size, one report;
- :mod:`~stepgraph.bench.domains`: the spatial-domain benchmark (pipeline vs baselines).

Peak memory comes from :mod:`stepgraph.pipeline.stages`, the probe the
pipeline's own stage log uses.
"""
