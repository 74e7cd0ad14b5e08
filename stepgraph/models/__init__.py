"""Reference models that follow stepgraph's model contract."""

from stepgraph.models.autoencoder import GraphAutoencoder

__all__ = ["GraphAutoencoder"]
