"""The reference job behind ``stepgraph demo`` and ``stepgraph train``, one module per stage.

- :mod:`~stepgraph.pipeline.config`: :class:`PipelineConfig`, every default and its reason;
- :mod:`~stepgraph.pipeline.preprocess`: counts to the model's input features;
- :mod:`~stepgraph.pipeline.domains`: clustering of the embedding into domains, and scores;
- :mod:`~stepgraph.pipeline.integration`: several sections: correction, mixing score, domains per section;
- :mod:`~stepgraph.pipeline.baselines`: training-free domain baselines;
- :mod:`~stepgraph.pipeline.figures`: the domain figure;
- :mod:`~stepgraph.pipeline.outputs`: the files a run writes;
- :mod:`~stepgraph.pipeline.stages`: time and peak memory per stage;
- :mod:`~stepgraph.pipeline.run`: :func:`run_pipeline`, the stages in order.
"""

from stepgraph.pipeline.config import DOMAIN_KEY, EMBEDDING_KEY, PipelineConfig
from stepgraph.pipeline.preprocess import log_normalise
from stepgraph.pipeline.run import run_pipeline

__all__ = ["DOMAIN_KEY", "EMBEDDING_KEY", "PipelineConfig", "log_normalise", "run_pipeline"]
