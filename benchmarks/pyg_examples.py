"""PyG's own examples, ported to the Trainer, side by side with their own loops.

Five ports, on graphs made here in the shapes of the examples' datasets (no
download):

- ``gcn``: PyG's ``examples/gcn.py`` (full-batch GCN, Cora's shape: 2,708
  nodes, 1,433 features, 7 classes, 140 training nodes; weight decay on the
  first layer only; "acc" is the test accuracy at the best validation
  accuracy), its loop against ``Trainer.train`` with the user's ``call_func``,
  two parameter groups and a ``ModelCheckpoint`` on ``val_acc`` in max mode;
- ``gae``: PyG's ``examples/autoencoder.py`` (a GAE with a 2-layer GCN encoder on
  a ``RandomLinkSplit`` of the same graph; "acc" is the test AUC), its loop
  against ``Trainer.train`` with the user's ``call_func``;
- ``sage_unsup``: PyG's ``examples/graph_sage_unsup.py`` (GraphSAGE trained on links
  through a ``LinkNeighborLoader``; "acc" is a logistic regression of the
  embedding on the classes), its loop against ``Trainer.train_graph_batch``;
- ``sage``: supervised GraphSAGE over a ``NeighborLoader [25, 10]`` (the
  ``ogbn-products`` example's loop on a 30,000-node graph), its loop against
  ``Trainer.train_node_sampler`` on the user's ``Data`` (no stepgraph dataset);
- ``inference``: embedding every node afterwards: PyG's own layer-wise
  ``BasicGNN.inference`` against ``Trainer.predict_layerwise`` (which runs it);
  ``predict_2hop``: the same against ``Trainer.predict`` over full 2-hop
  neighbourhoods (the loss column is the outputs' mean absolute value: equal
  outputs give equal values).

Each pair runs alternately (``--repeats``), from the same seed and the same
loaders, and reports the final loss and accuracy of both (equal when the port
is exact) and the median time ratio Trainer / own loop.

    python benchmarks/pyg_examples.py [--threads 1] [--repeats 3]

Writes benchmarks/results/pyg_examples.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from _common import RESULTS, report_rows
from torch_geometric.data import Data
from torch_geometric.nn import GCNConv, GraphSAGE

from stepgraph import Trainer, seed_everything
from stepgraph.data.loaders import graph_loader, node_loaders
from stepgraph.train.checkpointing import ModelCheckpoint


def planted_graph(n: int, n_features: int, n_classes: int, degree: int, seed: int = 0) -> Data:
    """Nodes in ``n_classes`` classes, edges mostly within a class, sparse binary features
    that lean towards the class (Cora-like homophily)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(n_classes, (n,), generator=g)
    order = torch.argsort(y)
    src = torch.randint(n, (n * degree // 2,), generator=g)
    near = (torch.argsort(order)[src] + torch.randint(-20, 21, src.shape, generator=g)).clamp(0, n - 1)
    dst = torch.where(torch.rand(src.shape, generator=g) < 0.8, order[near], torch.randint(n, src.shape, generator=g))
    edge_index = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)
    edge_index = edge_index[:, edge_index[0] != edge_index[1]]
    centre = (torch.rand(n_classes, n_features, generator=g) < 0.02).float()
    x = (torch.rand(n, n_features, generator=g) < 0.01).float() + centre[y] * (torch.rand(n, 1, generator=g) < 0.6)
    x = x.clamp(max=1)
    return Data(x=x / x.sum(1, keepdim=True).clamp(min=1), y=y, edge_index=edge_index)


class GCN(torch.nn.Module):
    def __init__(self, n_in, hidden, n_out):
        super().__init__()
        self.conv1, self.conv2 = GCNConv(n_in, hidden), GCNConv(hidden, n_out)

    def forward(self, x, edge_index):
        x = F.dropout(x, p=0.5, training=self.training)
        x = self.conv1(x, edge_index).relu()
        x = F.dropout(x, p=0.5, training=self.training)
        return self.conv2(x, edge_index)


def gcn(epochs: int) -> tuple:
    """PyG's ``examples/gcn.py``: weight decay on the first convolution only, validation
    accuracy every epoch, the test accuracy of the epoch with the best validation accuracy."""
    data = planted_graph(2708, 1433, 7, 4)
    train, valid, test = torch.arange(140), torch.arange(200, 700), torch.arange(1708, 2708)

    def groups(model):
        return [{"params": model.conv1.parameters(), "weight_decay": 5e-4}, {"params": model.conv2.parameters()}]

    def accuracy(model, ind):
        return (model(data.x, data.edge_index)[ind].argmax(-1) == data.y[ind]).float().mean()

    def own():
        torch.manual_seed(0)
        model = GCN(1433, 16, 7)
        opt = torch.optim.Adam(groups(model), lr=0.01)
        best_val = test_acc = 0.0
        start = time.perf_counter()
        for _ in range(epochs):
            model.train()
            opt.zero_grad()
            loss = F.cross_entropy(model(data.x, data.edge_index)[train], data.y[train])
            loss.backward()
            opt.step()
            model.eval()
            with torch.no_grad():
                val_acc, tmp_test = float(accuracy(model, valid)), float(accuracy(model, test))
            if val_acc > best_val:
                best_val, test_acc = val_acc, tmp_test
        return {"seconds": time.perf_counter() - start, "loss": loss.item(), "acc": test_acc}

    def ported():
        torch.manual_seed(0)
        model = GCN(1433, 16, 7)
        trainer = Trainer(
            model,
            progress=False,
            use_earlystop=False,
            restore_best=True,  # the weights of the best validation accuracy
            callbacks=[ModelCheckpoint(monitor="val_acc", mode="max", save_last=False)],
            trace_func=lambda m: None,
        )
        trainer.init_optimizer(lr=0.01, params=groups(model))

        def call(X, ind):
            out = model(X, data.edge_index)[ind]
            return {"loss": F.cross_entropy(out, data.y[ind]), "acc": (out.argmax(-1) == data.y[ind]).float().mean()}

        start = time.perf_counter()
        trainer.train(epochs=epochs, X=data.x, train_ind=train, valid_ind=valid, call_func=call)
        seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            test_acc = float(accuracy(model, test))
        return {"seconds": seconds, "loss": trainer.history[-1]["loss"], "acc": test_acc}

    return own, ported


def gae(epochs: int) -> tuple:
    """PyG's ``examples/autoencoder.py`` (GAE with a 2-layer GCN encoder, ``RandomLinkSplit``)."""
    from torch_geometric.nn import GAE
    from torch_geometric.transforms import RandomLinkSplit

    data = planted_graph(2708, 1433, 7, 4, seed=3)
    torch.manual_seed(0)
    train_data, _, test_data = RandomLinkSplit(
        num_val=0.05, num_test=0.1, is_undirected=True, split_labels=True, add_negative_train_samples=False
    )(data)

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = GCNConv(1433, 32), GCNConv(32, 16)

        def forward(self, x, edge_index):
            return self.conv2(self.conv1(x, edge_index).relu(), edge_index)

    def score(model):
        model.eval()
        with torch.no_grad():
            z = model.encode(test_data.x, test_data.edge_index)
            auc, _ap = model.test(z, test_data.pos_edge_label_index, test_data.neg_edge_label_index)
        return auc

    def own():
        seed_everything(0)  # PyG's negative sampling draws from Python's generator too
        model = GAE(Encoder())
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        start = time.perf_counter()
        for _ in range(epochs):
            model.train()
            opt.zero_grad()
            z = model.encode(train_data.x, train_data.edge_index)
            loss = model.recon_loss(z, train_data.pos_edge_label_index)
            loss.backward()
            opt.step()
        return {"seconds": time.perf_counter() - start, "loss": loss.item(), "acc": score(model)}

    def ported():
        seed_everything(0)
        model = GAE(Encoder())
        trainer = Trainer(model, progress=False, use_earlystop=False, trace_func=lambda m: None)
        trainer.init_optimizer(lr=0.01)

        def call(X, ind):  # the whole graph each epoch: ind (every node) is not needed
            z = model.encode(X, train_data.edge_index)
            return {"recon_loss": model.recon_loss(z, train_data.pos_edge_label_index)}

        start = time.perf_counter()
        trainer.train(epochs=epochs, X=train_data.x, call_func=call)
        return {"seconds": time.perf_counter() - start, "loss": trainer.history[-1]["recon_loss"], "acc": score(model)}

    return own, ported


def sage(epochs: int) -> tuple:
    data = planted_graph(30_000, 100, 10, 10, seed=1)
    train = torch.arange(20_000)

    def loader():
        return node_loaders(data, [25, 10], batch_size=1024, train_ind=train, seed=0)[0]

    def run_own():
        torch.manual_seed(0)
        model = GraphSAGE(100, 64, num_layers=2, out_channels=10)
        opt = torch.optim.Adam(model.parameters(), lr=0.003)
        batches = loader()
        start = time.perf_counter()
        for _ in range(epochs):
            model.train()
            total = count = 0
            for batch in batches:
                opt.zero_grad()
                out = model(batch.x, batch.edge_index)[: batch.batch_size]
                loss = F.cross_entropy(out, batch.y[: batch.batch_size])
                loss.backward()
                opt.step()
                total += float(loss) * batch.batch_size
                count += batch.batch_size
        return model, {"seconds": time.perf_counter() - start, "loss": total / count}

    def run_ported():
        torch.manual_seed(0)
        model = GraphSAGE(100, 64, num_layers=2, out_channels=10)
        trainer = Trainer(model, progress=False, use_earlystop=False, trace_func=lambda m: None)
        trainer.init_optimizer(lr=0.003)

        def call(batch, ind, step):
            return {"loss": F.cross_entropy(model(batch.x, batch.edge_index)[ind], batch.y[ind])}

        batches = loader()
        start = time.perf_counter()
        trainer.train_node_sampler(epochs=epochs, gloader=batches, call_func=call)
        return model, {"seconds": time.perf_counter() - start, "loss": trainer.history[-1]["loss"]}

    def accuracy(model):
        model.eval()
        with torch.no_grad():
            pred = model(data.x, data.edge_index).argmax(-1)
        return float((pred[20_000:] == data.y[20_000:]).float().mean())

    def own():
        model, row = run_own()
        return {**row, "acc": accuracy(model)}

    def ported():
        model, row = run_ported()
        return {**row, "acc": accuracy(model)}

    return own, ported


def sage_unsup(epochs: int) -> tuple:
    """PyG's ``examples/graph_sage_unsup.py``: GraphSAGE trained on links (``LinkNeighborLoader``,
    one negative per positive edge), scored here by a logistic regression of the embedding
    on the classes ("acc")."""
    from torch_geometric.loader import LinkNeighborLoader

    from stepgraph.data.sampler import make_neighbor_sampler

    data = planted_graph(10_000, 100, 10, 10, seed=4)

    def loader():
        sampler = make_neighbor_sampler(data, [10, 10])  # pyg-lib is not needed
        return LinkNeighborLoader(
            data, [10, 10], batch_size=256, shuffle=True, neg_sampling_ratio=1.0, neighbor_sampler=sampler
        )

    def step_loss(model, batch):
        h = model(batch.x, batch.edge_index)
        score = (h[batch.edge_label_index[0]] * h[batch.edge_label_index[1]]).sum(-1)
        return F.binary_cross_entropy_with_logits(score, batch.edge_label)

    def accuracy(model):
        model.eval()
        with torch.no_grad():
            z = model(data.x, data.edge_index)
        clf = torch.nn.Linear(z.shape[1], 10)
        opt = torch.optim.Adam(clf.parameters(), lr=0.05)
        for _ in range(100):
            opt.zero_grad()
            F.cross_entropy(clf(z[:8000]), data.y[:8000]).backward()
            opt.step()
        return float((clf(z[8000:]).argmax(-1) == data.y[8000:]).float().mean())

    def own():
        seed_everything(0)
        model = GraphSAGE(100, 64, num_layers=2)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        batches = loader()
        start = time.perf_counter()
        for _ in range(epochs):
            model.train()
            total = count = 0
            for batch in batches:
                opt.zero_grad()
                loss = step_loss(model, batch)
                loss.backward()
                opt.step()
                total += loss.item() * batch.edge_label.numel()
                count += batch.edge_label.numel()
        seconds = time.perf_counter() - start
        seed_everything(1)
        return {"seconds": seconds, "loss": total / count, "acc": accuracy(model)}

    def ported():
        seed_everything(0)
        model = GraphSAGE(100, 64, num_layers=2)
        trainer = Trainer(model, progress=False, use_earlystop=False, trace_func=lambda m: None)
        trainer.init_optimizer(lr=0.01)
        batches = loader()
        start = time.perf_counter()
        trainer.train_graph_batch(
            epochs=epochs, gloader=batches, call_func=lambda batch, ind, step: {"loss": step_loss(model, batch)}
        )
        seconds = time.perf_counter() - start
        seed_everything(1)
        return {"seconds": seconds, "loss": trainer.history[-1]["loss"], "acc": accuracy(model)}

    return own, ported


def _inference_pair(two_hop: bool) -> tuple:
    data = planted_graph(30_000, 100, 10, 10, seed=2)
    torch.manual_seed(0)
    model = GraphSAGE(100, 64, num_layers=2, out_channels=10)
    trainer = Trainer(model, progress=False, trace_func=lambda m: None)

    def own():  # PyG's own layer-wise inference over full 1-hop neighbourhoods
        model.eval()
        start = time.perf_counter()
        with torch.no_grad():
            out = model.inference(graph_loader(data, n_layers=1, batch_size=1024))
        return {"seconds": time.perf_counter() - start, "loss": float(out.abs().mean()), "acc": float("nan")}

    def ported():
        start = time.perf_counter()
        if two_hop:  # every batch's whole 2-hop neighbourhood (what predict did without a layer-wise plan)
            out = trainer.predict(graph_loader(data, n_layers=2, batch_size=1024))
        else:
            out = trainer.predict_layerwise(data)
        return {"seconds": time.perf_counter() - start, "loss": float(out.abs().mean()), "acc": float("nan")}

    return own, ported


def inference(_epochs: int) -> tuple:
    """``Trainer.predict_layerwise`` of a GraphSAGE against PyG's own ``inference``."""
    return _inference_pair(two_hop=False)


def predict_2hop(_epochs: int) -> tuple:
    """``Trainer.predict`` over full 2-hop neighbourhoods against PyG's own ``inference``."""
    return _inference_pair(two_hop=True)


EXAMPLES = {
    "gcn": (gcn, 200),
    "gae": (gae, 100),
    "sage_unsup": (sage_unsup, 1),
    "sage": (sage, 2),
    "inference": (inference, 1),
    "predict_2hop": (predict_2hop, 1),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", default=",".join(EXAMPLES), help="comma separated: " + ", ".join(EXAMPLES))
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each side")
    parser.add_argument("--out", default=str(RESULTS / "pyg_examples"), help="OUT.json and OUT.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.examples.split(","):
        make, epochs = EXAMPLES[name]
        own, ported = make(epochs)
        runs = {"own": [], "trainer": []}
        for _ in range(args.repeats):
            runs["own"].append(own())
            runs["trainer"].append(ported())
        ratio = statistics.median(t["seconds"] / o["seconds"] for o, t in zip(runs["own"], runs["trainer"]))
        o, t = runs["own"][-1], runs["trainer"][-1]
        rows.append(
            {
                "example": name,
                "own loss": round(o["loss"], 6),
                "trainer loss": round(t["loss"], 6),
                "own acc": round(o["acc"], 4),
                "trainer acc": round(t["acc"], 4),
                "own s": round(statistics.median(r["seconds"] for r in runs["own"]), 3),
                "trainer s": round(statistics.median(r["seconds"] for r in runs["trainer"]), 3),
                "time ratio": round(ratio, 3),
            }
        )
        print(rows[-1], flush=True)
    report_rows(
        args.out,
        rows,
        ["example", "own loss", "trainer loss", "own acc", "trainer acc", "own s", "trainer s", "time ratio"],
        {"threads": args.threads, "repeats": args.repeats},
    )


if __name__ == "__main__":
    main()
