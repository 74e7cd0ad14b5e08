"""A graph autoencoder for spatial expression data: the reference model."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, GCNConv, SAGEConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import softmax

from stepgraph._validation import check_choice, check_int, check_number
from stepgraph.train.layerwise import LayerwiseLayer, LayerwisePlan, weighted_sum

__all__ = ["GraphAutoencoder"]

_CONVS = {"gcn": GCNConv, "sage": SAGEConv, "gat": GATConv}
_ACTIVATIONS = {"relu": F.relu, "elu": F.elu}


class GraphAutoencoder(nn.Module):
    r"""A graph autoencoder that embeds every cell (or spot) from its own
    expression and that of its spatial neighbours, and reconstructs its
    expression from the embedding.

    The encoder is a stack of :obj:`n_layers` graph convolutions
    (:class:`~torch_geometric.nn.conv.GCNConv`,
    :class:`~torch_geometric.nn.conv.SAGEConv` or, as in STAGATE,
    :class:`~torch_geometric.nn.conv.GATConv`) with a non-linearity (ReLU or ELU) and dropout,
    followed by a linear map to the :obj:`latent_dim`-dimensional embedding
    (two maps, mean and log-variance, when :obj:`variational=True`). The
    decoder is an MLP from the embedding, concatenated with a learned
    section (batch) embedding when :obj:`n_batches > 0`, back to the
    :obj:`in_dim` features. It expects log1p-normalised expression and is
    trained with the mean squared error.

    The model follows stepgraph's model contract: :meth:`loss` returns a dict
    of named scalar losses (:obj:`"recon_loss"`, plus :obj:`"kl_loss"` when
    variational) that the :class:`~stepgraph.Trainer` sums and logs.

    **Layer-wise trimming.** On a :class:`~torch_geometric.loader.NeighborLoader`
    mini-batch, pass its per-hop counts (:obj:`batch.num_sampled_nodes` and
    :obj:`batch.num_sampled_edges`) as :obj:`num_sampled_nodes_per_hop` and
    :obj:`num_sampled_edges_per_hop` to :meth:`loss` or :meth:`encode`: each
    layer then computes only what the next one reads, as
    :func:`torch_geometric.utils.trim_to_layer` does, and one step further:
    layer :math:`l` (of :math:`L`) reads the nodes of the first
    :math:`L - l + 1` hops and computes outputs for those of the first
    :math:`L - l` only, aggregating before the linear map (for GCN, whose
    normalisation is computed once on the whole sampled subgraph, and for a
    GAT layer that widens its input, whose edges then carry the narrower
    input: the first layer of 20 input components). The seed
    nodes get the same outputs as without trimming (up to float rounding).
    Trimming is skipped (the result is the same, only slower) when the
    losses are asked of non-seed nodes, when there are fewer hops than
    layers, or when the subgraph has self-loops.

    Parameters
    ----------
    in_dim : int
        Number of input features (genes).
    hidden_dim : int, optional
        Width of the graph convolutions and of the decoder's hidden layer.
        (default: :obj:`128`)
    latent_dim : int, optional
        Size of the embedding. (default: :obj:`32`)
    n_layers : int, optional
        Number of graph convolutions in the encoder (the receptive field in
        hops; match it to the number of fan-outs of a
        :class:`~torch_geometric.loader.NeighborLoader`). (default: :obj:`2`)
    conv : str, optional
        :obj:`"gcn"` (symmetric normalisation with self-loops; uses
        :obj:`edge_weight`), :obj:`"sage"` (mean aggregation plus a separate
        self term; ignores :obj:`edge_weight`) or :obj:`"gat"` (one attention
        head over the node and its neighbours, which learns how much each
        neighbour counts, as STAGATE; ignores :obj:`edge_weight`).
        (default: :obj:`"gcn"`)
    variational : bool, optional
        If set to :obj:`True`, the encoder outputs a Gaussian posterior, the
        decoder sees a sample from it in training mode (its mean in eval
        mode), and :meth:`loss` adds a :obj:`"kl_loss"`. (default: :obj:`False`)
    n_batches : int, optional
        Number of sections (batches) to correct for. If greater than
        :obj:`0`, a learned :obj:`batch_embedding` of each node's section is
        concatenated to the decoder input, and :obj:`batch_label` must be
        passed. (default: :obj:`0`)
    batch_emb_dim : int, optional
        Size of the section embedding. (default: :obj:`8`)
    dropout : float, optional
        Dropout probability after every hidden layer. (default: :obj:`0.0`)
    activation : str, optional
        The non-linearity after every hidden layer: :obj:`"relu"` or
        :obj:`"elu"` (smooth, with negative outputs, as STAGATE).
        (default: :obj:`"relu"`)

    Examples
    --------
    >>> import torch
    >>> from stepgraph.models import GraphAutoencoder
    >>> x = torch.rand(100, 50)
    >>> edge_index = torch.randint(0, 100, (2, 400))
    >>> model = GraphAutoencoder(50, hidden_dim=32, latent_dim=8)
    >>> losses = model.loss(x, edge_index=edge_index)
    >>> sorted(losses)
    ['recon_loss']
    >>> model.encode(x, edge_index).shape
    torch.Size([100, 8])
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 128,
        latent_dim: int = 32,
        n_layers: int = 2,
        conv: str = "gcn",
        variational: bool = False,
        n_batches: int = 0,
        batch_emb_dim: int = 8,
        dropout: float = 0.0,
        activation: str = "relu",
    ):
        super().__init__()
        check_choice(conv, "conv", sorted(_CONVS))
        in_dim, hidden_dim, latent_dim, n_layers, batch_emb_dim = (
            check_int(value, name, minimum=1)
            for name, value in (
                ("in_dim", in_dim),
                ("hidden_dim", hidden_dim),
                ("latent_dim", latent_dim),
                ("n_layers", n_layers),
                ("batch_emb_dim", batch_emb_dim),
            )
        )
        n_batches = check_int(n_batches, "n_batches", minimum=0)
        check_choice(activation, "activation", sorted(_ACTIVATIONS))
        dropout = check_number(dropout, "dropout", minimum=0, below=1)

        self.in_dim, self.latent_dim, self.n_batches = in_dim, latent_dim, n_batches
        self.conv_type, self.activation, self._act = conv, activation, _ACTIVATIONS[activation]
        self.variational, self.dropout = variational, dropout

        conv_cls = _CONVS[conv]
        # GCN's normalisation is computed once per forward pass (in _hidden), not per layer
        options = {"normalize": False} if conv == "gcn" else {}
        dims = [in_dim] + [hidden_dim] * n_layers
        self.convs = nn.ModuleList(conv_cls(a, b, **options) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.mu = nn.Linear(hidden_dim, latent_dim)
        self.logvar = nn.Linear(hidden_dim, latent_dim) if variational else None

        emb_dim = batch_emb_dim if n_batches > 0 else 0
        self.batch_embedding = nn.Embedding(n_batches, batch_emb_dim) if n_batches > 0 else None
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim + emb_dim, hidden_dim),
            nn.ELU() if activation == "elu" else nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, in_dim),
        )

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        r"""The encoder's parameters (graph convolutions and latent heads).

        The :class:`~stepgraph.Trainer` uses this hook for stage-2
        fine-tuning, where the backbone is trained with the smaller
        :obj:`tune_lr`; the section embedding is the set of parameters whose
        name contains :obj:`"batch_embedding"`, and the decoder is the rest.
        """
        yield from self.convs.parameters()
        yield from self.mu.parameters()
        if self.logvar is not None:
            yield from self.logvar.parameters()

    def _hidden(
        self,
        x: Tensor,
        edge_index: Tensor | None,
        edge_weight: Tensor | None,
        hops: tuple[list[int], list[int]] | None = None,
    ) -> Tensor:
        if edge_index is None:
            # No graph: every node only sees itself (GCN's and GAT's self-loops, SAGE's
            # root term), i.e. an MLP.
            edge_index = torch.empty(2, 0, dtype=torch.long, device=x.device)
            edge_weight, hops = None, None
        if hops is not None and (len(hops[1]) < len(self.convs) or bool((edge_index[0] == edge_index[1]).any())):
            hops = None  # trimming would not be exact: compute everything
        if hops is not None:
            return self._hidden_trimmed(x, edge_index, edge_weight, *hops)
        if self.conv_type == "gcn":
            # GCN's normalisation with self-loops, once for all layers
            edge_index, edge_weight = gcn_norm(edge_index, edge_weight, x.size(0), add_self_loops=True, dtype=x.dtype)
        for conv in self.convs:
            if self.conv_type == "gcn":
                x = conv(x, edge_index, edge_weight)
            else:
                x = conv(x, edge_index)
            x = F.dropout(self._act(x), p=self.dropout, training=self.training)
        return x

    def _hidden_trimmed(
        self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None, nodes: list[int], edges: list[int]
    ) -> Tensor:
        r"""The hidden state of the seed nodes, each layer computing only what
        the next one reads. Nodes and edges of a NeighborLoader batch are
        ordered by hop, so layer :math:`l` of :math:`L` reads the first
        ``sum(nodes[:L - l + 1])`` nodes, writes the first ``sum(nodes[:L - l])``
        and uses the first ``sum(edges[:L - l])`` edges (those into them).
        """
        n_layers = len(self.convs)
        src, dst = edge_index
        if self.conv_type == "gcn":
            # gcn_norm over the whole sampled subgraph (self-loops of weight 1),
            # exactly as without trimming
            weight = (
                torch.ones(src.numel(), dtype=x.dtype, device=x.device)
                if edge_weight is None
                else edge_weight.to(x.dtype)
            )
            deg = torch.ones(x.size(0), dtype=x.dtype, device=x.device).index_add_(0, dst, weight)
            inv_sqrt = deg.rsqrt()
            norm = inv_sqrt.index_select(0, src) * weight * inv_sqrt.index_select(0, dst)
            loop = inv_sqrt * inv_sqrt
        for layer, conv in enumerate(self.convs):
            n_out = sum(nodes[: n_layers - layer])
            x = x[: sum(nodes[: n_layers - layer + 1])]
            m = sum(edges[: n_layers - layer])
            if self.conv_type == "gcn":
                # aggregate, then transform only the n_out rows: Â (X W) = (Â X) W
                messages = x.index_select(0, src[:m]) * norm[:m].unsqueeze(1)
                agg = (x[:n_out] * loop[:n_out].unsqueeze(1)).index_add(0, dst[:m], messages)
                x = conv.lin(agg) + conv.bias
            elif self.conv_type == "gat" and _aggregates_inputs_first(conv):
                x = _gat_aggregating_inputs(conv, x, n_out, src[:m], dst[:m])
            else:
                x = conv((x, x[:n_out]), edge_index[:, :m], size=(x.size(0), n_out))
            x = F.dropout(self._act(x), p=self.dropout, training=self.training)
        return x

    def layerwise(self, method: str = "encode") -> LayerwisePlan | None:
        r"""The plan by which :meth:`encode` (``method="encode"``) or
        :meth:`forward` (``"forward"``) runs one layer for every node at a
        time (see :mod:`stepgraph.train.layerwise`;
        :meth:`~stepgraph.Trainer.predict_layerwise` uses it). Each layer's
        linear map (and a GAT's attention logits) runs once per node, then its
        aggregation once per edge; every node gets what this model gives it
        on the whole graph at once (GCN normalised once on the whole graph,
        with self-loops). ``None`` for any other method.
        """
        if method not in ("encode", "forward"):
            return None

        def graph(edge_index, edge_weight, num_nodes):
            if self.conv_type != "gcn":
                return edge_index, edge_weight
            dtype = self.mu.weight.dtype
            return gcn_norm(
                edge_index,
                None if edge_weight is None else edge_weight.to(dtype),
                num_nodes,
                add_self_loops=True,
                dtype=dtype,
            )

        def head(h, batch_label):
            z = self.mu(h)
            return z if method == "encode" else self.decode(z, batch_label)

        return LayerwisePlan(layers=[self._layerwise_layer(conv) for conv in self.convs], head=head, graph=graph)

    def _layerwise_layer(self, conv) -> LayerwiseLayer:
        """One convolution as a node-wise transform and an aggregation over edges."""

        def finish(out, t, start, stop):
            return F.dropout(self._act(out), p=self.dropout, training=self.training)

        if self.conv_type == "gcn":  # Â (X W) + b, Â normalised with self-loops in graph()

            def aggregate(t, src, dst, weight, start, stop):
                return finish(weighted_sum(src, dst, weight, stop - start, t) + conv.bias, t, start, stop)

            return LayerwiseLayer(conv.lin, aggregate)

        if self.conv_type == "sage":  # W_l mean_j x_j + b + W_r x_i, the maps applied first
            width = conv.out_channels

            def transform(x):
                return torch.cat([F.linear(x, conv.lin_l.weight), conv.lin_r(x)], dim=1)

            def aggregate(t, src, dst, weight, start, stop):
                n_out = stop - start
                mean = 1.0 / torch.bincount(dst, minlength=n_out).clamp_(min=1).index_select(0, dst)
                total = weighted_sum(src, dst, mean, n_out, t[:, :width])
                return finish(total + conv.lin_l.bias + t[start:stop, width:], t, start, stop)

            return LayerwiseLayer(transform, aggregate)

        heads, channels = conv.heads, conv.out_channels  # GAT: x W, then attention over the edges

        def transform(x):
            h = conv.lin(x).view(-1, heads, channels)
            logits = [(h * conv.att_src).sum(-1), (h * conv.att_dst).sum(-1)]
            return torch.cat([h.view(-1, heads * channels), *logits], dim=1)

        def aggregate(t, src, dst, weight, start, stop):
            n_out, width = stop - start, heads * channels
            keep = src != dst + start  # self-loops: one per node instead, as GATConv has them
            src, dst = src.masked_select(keep), dst.masked_select(keep)
            own = t[start:stop]
            logits = F.leaky_relu(
                t[:, width : width + heads].index_select(0, src) + own[:, width + heads :].index_select(0, dst),
                conv.negative_slope,
            )
            loop = F.leaky_relu(own[:, width : width + heads] + own[:, width + heads :], conv.negative_slope)
            # the softmax over each node's edges and its self-loop, then one sparse product per head
            top = loop.clone().scatter_reduce_(0, dst.unsqueeze(1).expand(-1, heads), logits, "amax")
            weights, loop = (logits - top.index_select(0, dst)).exp_(), (loop - top).exp_()
            total = loop + loop.new_zeros(loop.shape).index_add_(0, dst, weights)
            weights, loop = weights / total.index_select(0, dst), loop / total
            h = t[:, :width].view(-1, heads, channels)
            out = torch.stack([weighted_sum(src, dst, weights[:, k], n_out, h[:, k]) for k in range(heads)], 1)
            out = out + loop.unsqueeze(-1) * own[:, :width].view(-1, heads, channels)
            out = out.reshape(n_out, width) if conv.concat else out.mean(dim=1)
            return finish(out if conv.bias is None else out + conv.bias, t, start, stop)

        return LayerwiseLayer(transform, aggregate)

    def _posterior(
        self,
        x: Tensor,
        edge_index: Tensor | None,
        edge_weight: Tensor | None,
        rows: Tensor | None = None,
        hops: tuple[list[int], list[int]] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        h = self._hidden(x, edge_index, edge_weight, hops)
        if rows is not None:
            h = h[rows]  # the heads only run on the rows asked for
        mu = self.mu(h)
        logvar = self.logvar(h).clamp(-10.0, 10.0) if self.logvar is not None else None
        return mu, logvar

    def encode(
        self,
        x: Tensor,
        edge_index: Tensor | None = None,
        edge_weight: Tensor | None = None,
        batch_label: Tensor | None = None,
        num_sampled_nodes_per_hop: list[int] | None = None,
        num_sampled_edges_per_hop: list[int] | None = None,
    ) -> Tensor:
        r"""Embeds every node of the (sub)graph.

        Parameters
        ----------
        x : torch.Tensor
            Node features, shape :obj:`[num_nodes, in_dim]`.
        edge_index : torch.Tensor, optional
            Graph connectivity; without it every node is embedded from its own
            features only.
        edge_weight : torch.Tensor, optional
            Edge weights (GCN only).
        batch_label : torch.Tensor, optional
            Not used by the encoder; accepted so that all methods take the same
            arguments.
        num_sampled_nodes_per_hop : list[int], optional
            Nodes per hop of a :class:`NeighborLoader` mini-batch
            (:obj:`batch.num_sampled_nodes`); with
            :obj:`num_sampled_edges_per_hop`, turns on layer-wise trimming, and
            only the seed nodes are embedded.
        num_sampled_edges_per_hop : list[int], optional
            Edges per hop (:obj:`batch.num_sampled_edges`).

        Returns
        -------
        torch.Tensor
            The embedding, shape :obj:`[num_nodes, latent_dim]` (the posterior
            mean when variational); with the per-hop counts,
            :obj:`[num_seed_nodes, latent_dim]`.
        """
        hops = _hops(num_sampled_nodes_per_hop, num_sampled_edges_per_hop)
        if hops is None:
            return self._posterior(x, edge_index, edge_weight)[0]
        seeds = torch.arange(hops[0][0], device=x.device)
        return self._posterior(x, edge_index, edge_weight, seeds, hops)[0]

    def decode(self, z: Tensor, batch_label: Tensor | None = None) -> Tensor:
        r"""Reconstructs the features from embeddings :obj:`z` of nodes in
        sections :obj:`batch_label` (required when :obj:`n_batches > 0`).
        """
        if self.batch_embedding is not None:
            if batch_label is None:
                raise ValueError(f"'batch_label' is required: the model corrects for {self.n_batches} sections")
            z = torch.cat([z, self.batch_embedding(batch_label.long())], dim=-1)
        return self.decoder(z)

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor | None = None,
        edge_weight: Tensor | None = None,
        batch_label: Tensor | None = None,
    ) -> Tensor:
        r"""Reconstructs the features of every node (from the posterior mean
        when variational); see :meth:`encode` for the arguments.
        """
        return self.decode(self.encode(x, edge_index, edge_weight), batch_label)

    def loss(
        self,
        x: Tensor,
        ind: Tensor | None = None,
        edge_index: Tensor | None = None,
        edge_weight: Tensor | None = None,
        batch_label: Tensor | None = None,
        num_sampled_nodes_per_hop: list[int] | None = None,
        num_sampled_edges_per_hop: list[int] | None = None,
    ) -> dict[str, Tensor]:
        r"""The training losses on the nodes :obj:`ind` of a (sub)graph.

        The encoder runs on the whole (sub)graph, so the nodes in :obj:`ind`
        see their neighbours; the losses are averaged over :obj:`ind` only.

        Parameters
        ----------
        x : torch.Tensor
            Node features (log1p-normalised expression) of all nodes of the
            (sub)graph, shape :obj:`[num_nodes, in_dim]`.
        ind : torch.LongTensor, optional
            Local positions of the nodes the losses are computed on, e.g.
            :obj:`arange(batch.batch_size)` for the seed nodes of a
            :class:`NeighborLoader` mini-batch (a boolean mask works too). All
            nodes if :obj:`None`.
        edge_index : torch.Tensor, optional
            Graph connectivity (local ids). Without it the encoder sees each
            node alone.
        edge_weight : torch.Tensor, optional
            Edge weights (GCN only).
        batch_label : torch.Tensor, optional
            Section of every node of the (sub)graph (required when
            :obj:`n_batches > 0`).
        num_sampled_nodes_per_hop : list[int], optional
            Nodes per hop of a :class:`NeighborLoader` mini-batch
            (:obj:`batch.num_sampled_nodes`); with
            :obj:`num_sampled_edges_per_hop`, turns on layer-wise trimming when
            :obj:`ind` holds seed nodes only. The losses are the same; the work
            is smaller.
        num_sampled_edges_per_hop : list[int], optional
            Edges per hop (:obj:`batch.num_sampled_edges`).

        Returns
        -------
        dict[str, torch.Tensor]
            :obj:`{"recon_loss": ...}` (plus :obj:`"kl_loss"` when
            variational): the mean squared reconstruction error per feature,
            averaged over the nodes; and the KL divergence of the posterior
            from :math:`\mathcal{N}(0, I)`, summed over latent dimensions,
            averaged over the nodes and divided by :obj:`in_dim`, so that
            their sum is the per-feature negative ELBO of a Gaussian decoder
            with variance :math:`1/2` (up to a constant).
        """
        target = x
        hops = _hops(num_sampled_nodes_per_hop, num_sampled_edges_per_hop)
        if ind is not None:
            ind = torch.as_tensor(ind, device=x.device)
            if ind.dtype == torch.bool:
                ind = ind.nonzero().view(-1)
            ind = ind.long()
            if hops is not None and ind.numel() and int(ind.max()) >= hops[0][0]:
                hops = None  # losses of non-seed nodes: no trimming
            target = x[ind]
            batch_label = batch_label[ind] if batch_label is not None else None
        else:
            hops = None  # losses of every node: nothing to trim
        mu, logvar = self._posterior(x, edge_index, edge_weight, ind, hops)

        z = mu
        if logvar is not None and self.training:
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = self.decode(z, batch_label)
        losses = {"recon_loss": F.mse_loss(recon, target.to(recon.dtype))}
        if logvar is not None:
            kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=-1)
            losses["kl_loss"] = kl.mean() / self.in_dim
        return losses


def _aggregates_inputs_first(conv: GATConv) -> bool:
    """Whether :func:`_gat_aggregating_inputs` computes ``conv`` exactly and
    with less work: a plain GAT layer (shared linear map without bias, self-loops,
    no attention dropout, edge features or residual) that widens its input.
    """
    return (
        getattr(conv, "lin", None) is not None
        and conv.lin.bias is None
        and conv.add_self_loops
        and conv.dropout == 0
        and conv.edge_dim is None
        and not getattr(conv, "residual", False)
        and conv.in_channels < conv.heads * conv.out_channels
    )


def _gat_aggregating_inputs(conv: GATConv, x: Tensor, n_out: int, src: Tensor, dst: Tensor) -> Tensor:
    r"""``conv((x, x[:n_out]), edges)`` for targets ``0..n_out-1`` (each also its
    own source, as in a NeighborLoader batch), its self-loops added, with the
    linear map applied after the aggregation: :math:`\sum_j \alpha_{ij} W x_j =
    W \sum_j \alpha_{ij} x_j`. The attention logits :math:`a^\top W x` are
    :math:`(W^\top a)^\top x`, so each edge carries the input's width (20 input
    components) instead of the output's (64): the first layer of a trimmed
    batch, which holds most of its edges, does about a third of the work.
    """
    heads, channels = conv.heads, conv.out_channels
    weight = conv.lin.weight.view(heads, channels, -1)  # (heads, out, in)
    att_src = torch.einsum("hc,hci->ih", conv.att_src[0], weight)  # (in, heads)
    att_dst = torch.einsum("hc,hci->ih", conv.att_dst[0], weight)
    loops = torch.arange(n_out, device=x.device)
    src, dst = torch.cat([src, loops]), torch.cat([dst, loops])
    logits = F.leaky_relu(
        (x @ att_src).index_select(0, src) + (x[:n_out] @ att_dst).index_select(0, dst), conv.negative_slope
    )
    alpha = softmax(logits, dst, num_nodes=n_out)  # (edges, heads): over each target's edges and self-loop
    messages = alpha.unsqueeze(-1) * x.index_select(0, src).unsqueeze(1)  # (edges, heads, in)
    total = messages.new_zeros(n_out, heads, x.size(1)).index_add_(0, dst, messages)
    out = torch.einsum("nhi,hci->nhc", total, weight)
    out = out.reshape(n_out, heads * channels) if conv.concat else out.mean(dim=1)
    return out if conv.bias is None else out + conv.bias


def _hops(nodes: list[int] | None, edges: list[int] | None) -> tuple[list[int], list[int]] | None:
    """The per-hop counts as two lists of ints, or ``None`` without them."""
    if nodes is None or edges is None:
        return None
    nodes, edges = [int(n) for n in nodes], [int(e) for e in edges]
    if len(nodes) != len(edges) + 1:
        raise ValueError(
            f"num_sampled_nodes_per_hop needs one entry more than "
            f"num_sampled_edges_per_hop (seeds, then one per hop); got "
            f"{len(nodes)} and {len(edges)}"
        )
    return nodes, edges
