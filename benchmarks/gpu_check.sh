#!/usr/bin/env bash
# The GPU path of stepgraph, checked in one short run on a machine with a CUDA device:
#   1. the tests marked `cuda` (pinned, non-blocking copies; training and layer-wise embedding on
#      the GPU, float32 and bf16-mixed, against the CPU);
#   2. the 1M-node trimmed epoch of the pipeline's model (GAT, 20 input features) on the GPU,
#      float32 and bf16 autocast (the sampler and the feature gather stay on the CPU, where
#      they are fast; each batch is copied through pinned memory);
#   3. `stepgraph train` on a 1M-cell x 500-gene, 4-section synthetic tissue with --device cuda,
#      its stages (seconds, peak RSS) printed.
# Figures go to stdout and to $OUT (default: benchmarks/results/gpu). Usage:
#   bash benchmarks/gpu_check.sh            # everything (about 5 minutes on one GPU)
#   N_CELLS=200000 bash benchmarks/gpu_check.sh   # a smaller tissue
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
OUT=${OUT:-benchmarks/results/gpu}
N_CELLS=${N_CELLS:-1000000}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), "no CUDA device: benchmarks/gpu_check.sh needs one"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
EOF

echo "== 1. tests marked cuda"
"$PY" -m pytest -q -m cuda tests/train/test_precision.py

echo "== 2. the ${N_CELLS}-node trimmed epoch (GAT, 20 features) on the GPU"
"$PY" - "$N_CELLS" "$OUT" <<'EOF'
import json, sys, time
import torch
sys.path.insert(0, "benchmarks")
from node_sampling import spatial_knn_graph
from torch_geometric.data import Data
from torch_geometric.loader import NeighborLoader
from stepgraph.data.sampler import BuiltinNeighborSampler
from stepgraph.models import GraphAutoencoder
from stepgraph.train.feeds import to_device

n, out = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
data = Data(x=torch.randn(n, 20), edge_index=spatial_knn_graph(n, 7, 0), num_nodes=n)
loader = NeighborLoader(data, [10, 5], batch_size=1024, shuffle=True,
                        neighbor_sampler=BuiltinNeighborSampler(data, [10, 5]))
rows = []
for precision in ("32", "bf16-mixed"):
    model = GraphAutoencoder(20, hidden_dim=64, latent_dim=16, conv="gat", activation="elu").cuda()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(2):  # the first epoch warms CUDA up
        torch.cuda.synchronize(); start = time.perf_counter(); gpu = 0.0
        for batch in loader:
            x, ei = to_device(batch.x, "cuda"), to_device(batch.edge_index, "cuda")
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision != "32"):
                losses = model.loss(x, ind=torch.arange(batch.batch_size, device="cuda"), edge_index=ei,
                                    num_sampled_nodes_per_hop=batch.num_sampled_nodes,
                                    num_sampled_edges_per_hop=batch.num_sampled_edges)
            opt.zero_grad(set_to_none=True); sum(losses.values()).backward(); opt.step()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    rows.append({"precision": precision, "epoch_s": seconds, "loss": float(losses["recon_loss"]),
                 "max_memory_mb": torch.cuda.max_memory_allocated() / 2**20})
    print(f"  precision {precision}: epoch {seconds:.1f} s, last loss {rows[-1]['loss']:.4f}, "
          f"GPU memory {rows[-1]['max_memory_mb']:.0f} MiB", flush=True)
json.dump({"n_nodes": n, "rows": rows}, open(f"{out}/trim_epoch.json", "w"), indent=1)
EOF

echo "== 3. stepgraph train on ${N_CELLS} cells x 500 genes, --device cuda"
for precision in 32 bf16-mixed; do
  "$PY" - "$N_CELLS" "$OUT" "$precision" <<'EOF'
import json, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, "benchmarks")
from end_to_end import synthetic_counts_h5ad

n, out, precision = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
with tempfile.TemporaryDirectory() as tmp:
    tissue = Path(tmp) / "tissue.h5ad"
    synthetic_counts_h5ad(tissue, n, 500, 4, 0.1)
    run = out / f"train_{precision}"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stepgraph", "train", str(tissue), "--batch-key", "section",
                    "--n-domains", "7", "--device", "cuda", "--precision", precision, "--quiet",
                    "--out", str(run)], check=True)
    wall = time.perf_counter() - start
summary = json.loads((run / "summary.json").read_text())
print(f"  precision {precision}: {wall:.0f} s wall, {summary['epochs_run']} epochs")
for row in summary["stages"]:
    print(f"    {row['stage']:>12}: {row['seconds']:8.1f} s, peak RSS {row['peak_rss_mb']:,.0f} MiB")
EOF
done
echo "figures in $OUT"
