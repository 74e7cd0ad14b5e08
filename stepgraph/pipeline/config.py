"""The settings of the reference pipeline: every default, each with its reason.

:class:`PipelineConfig` is the one source of the pipeline's defaults. Each
field is declared once, with its help text and the reason for its default in
its ``metadata``; the options of ``stepgraph train`` are generated from the
fields (see :func:`cli_option`), and :func:`defaults_table` renders them as
the user guide's table.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace

from stepgraph.graph.spatial import METHODS
from stepgraph.pipeline.domains import CLUSTER_METHODS
from stepgraph.pipeline.preprocess import SCALINGS

__all__ = ["PipelineConfig", "EMBEDDING_KEY", "DOMAIN_KEY", "RECIPES", "gene_set_kind", "cli_option", "defaults_table"]

EMBEDDING_KEY = "X_stepgraph"
DOMAIN_KEY = "stepgraph_domain"

#: The model input and encoder of each kind of gene set (:func:`gene_set_kind`): the values that
#: :meth:`PipelineConfig.resolved` gives the fields left at ``None``. With the default neighbourhood
#: features the input is 50 per-cell components whatever the gene set (the neighbourhood blocks do the
#: averaging), and only the encoder (``fanout``, ``hidden_dim``) comes from here; the input components
#: below are those of ``features="expression"``. A transcriptome's spots or cells
#: carry many axes of expression above their noise: the model reads 200 components of each cell's own
#: expression and one attention layer, 256 wide, weighs its neighbours (STAGATE's design). A panel's
#: cells carry fewer: the model reads 20 components of neighbourhood means, averaged once more, through
#: two narrower layers. Measured on both kinds in ``docs/benchmarks.md`` (a transcriptome's own input).
RECIPES = {
    "transcriptome": {"n_pcs": 200, "feature_smooth": 0, "fanout": [10], "hidden_dim": 256},
    "panel": {"n_pcs": 20, "feature_smooth": 1, "fanout": [10, 5], "hidden_dim": 64},
}


def gene_set_kind(n_genes: int, n_top_genes: int) -> str:
    """``"panel"`` when the ``n_genes`` genes are kept whole (at most ``n_top_genes``: a targeted
    panel, chosen by hand), ``"transcriptome"`` when highly variable genes are selected from more.
    :class:`~stepgraph.pipeline.preprocess.ExpressionFeatures`' ``scaling="auto"`` follows the same rule.
    """
    return "panel" if n_genes <= n_top_genes else "transcriptome"


def _setting(
    default,
    help: str,
    reason: str,
    *,
    cli: bool = True,
    flag: str | None = None,
    choices=None,
    positive: bool = False,
    shown: str | None = None,
    metavar: str | None = None,
    kw_only: bool = False,
):
    """A field of :class:`PipelineConfig`, declared once.

    ``help`` says what the field sets (the CLI's help), ``reason`` why the
    default is what it is. ``cli=False`` keeps the field off the command line;
    ``flag`` names its option when ``--name-with-dashes`` does not fit;
    ``choices``, and ``positive`` (an integer >= 1, a number > 0), are checked by the CLI;
    ``shown`` is the default as ``--help`` writes it when the value itself
    says too little (``None``); ``{name}`` in it is the default of field ``name``.
    ``kw_only`` marks fields added after the first release, so that the
    positions of the others in ``PipelineConfig(...)`` stay as they were.
    """
    metadata = {
        "help": help,
        "reason": reason,
        "cli": cli,
        "flag": flag,
        "choices": choices,
        "positive": positive,
        "shown": shown,
        "metavar": metavar,
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata, kw_only=kw_only)
    return field(default=default, metadata=metadata, kw_only=kw_only)


@dataclass
class PipelineConfig:
    """Settings of :func:`~stepgraph.pipeline.run_pipeline` (the CLI options of ``stepgraph train``).

    Every default has a reason that holds for Visium spots and for
    single-cell imaging panels alike; none is tuned to one tissue. Each field
    carries its help text and its reason in ``metadata`` (``"help"``,
    ``"reason"``); the list below and the user guide's table are generated
    from them (:func:`defaults_table`). The pipeline reads every value it
    uses from here and passes each one explicitly to the stages
    (:meth:`feature_options`, :meth:`cluster_options`).
    """

    spatial_key: str = _setting(
        "spatial", "obsm key of the coordinates", "where squidpy and scanpy keep the coordinates"
    )
    batch_key: str | None = _setting(
        None,
        "obs column of the sections; no edge joins two sections",
        "one section unless told; with several sections, a section embedding is learnt in the decoder "
        "(one section has no batch effect to learn)",
        shown="none",
    )
    scale_per_section: bool = _setting(
        True,
        "--no-scale-per-section: with several sections, select, centre and scale the genes over "
        "all cells rather than within each section",
        "a section's own offset and scale of a gene (chemistry, permeabilisation, patient) is a sample "
        "effect, for spots and cells alike; standardising within each section removes it before the "
        "components are fitted, and the genes are selected within the sections too, as scanpy's batch_key"
        " selects them, so that a gene that only differs between sections is not taken for a variable "
        "one. Turn it off when the sections share one chemistry and differ in their mixture of domains "
        "only (measured in docs/benchmarks.md, several sections)",
        flag="--no-scale-per-section",
        kw_only=True,
    )
    harmony: bool = _setting(
        False,
        "with several sections, correct the embedding with Harmony (harmonypy) before clustering",
        "Harmony pulls the sections together even where they hold different mixtures of domains; after "
        "the per-section standardisation it mixed the sections better but did not raise the per-section "
        "ARI (measured in docs/benchmarks.md, several sections). Turn it on when the sections still "
        "separate in embedding.png",
        kw_only=True,
    )
    domains_per_section: bool = _setting(
        False,
        "cluster each section's embedding on its own (labels are then per section)",
        "joint domains give one label per domain across the sections, which comparing sections needs",
        kw_only=True,
    )
    layer_key: str | None = _setting(
        None,
        "use this layer of counts instead of X",
        "counts are read from X, as scanpy reads them",
        flag="--layer",
        shown="X",
    )
    n_top_genes: int = _setting(
        3000,
        "highly variable genes kept when there are more genes",
        "a whole transcriptome is mostly noise genes; a targeted panel (tens to hundreds of genes) was "
        "chosen by hand and is kept whole",
        positive=True,
    )
    scaling: str = _setting(
        "auto",
        "weight of each gene in the components: zscore (unit variance), center (its own variance of "
        "log-CP10k) or auto (zscore for a panel kept whole, center for genes selected from more)",
        "a targeted panel's genes were each chosen, and z-scores give a low-level marker the weight of a "
        "highly expressed gene (scanpy's scale, BANKSY); most of a transcriptome's highly variable genes "
        "are sparsely detected, and unit variance would give their counting noise the weight of a marker "
        "(STAGATE, SpaGCN and BayesSpace feed log values). With several sections, centred genes are "
        "divided by one number per section, its overall scale of the log values (measured in "
        "docs/benchmarks.md, the weight of each gene)",
        choices=SCALINGS,
        kw_only=True,
    )
    target_sum: float | str = _setting(
        "median",
        "each cell's counts are scaled to this total before the log: a number (1e4: log-CP10k), or median "
        "(the median total of the cells)",
        "scanpy's normalize_total default: a cell's single count stays near log1p(1) whatever the depth of the "
        "technology, where log-CP10k lifts it far from zero on a panel of few counts per cell; with the "
        "neighbourhood features it leads on the single-cell panels and is level on the Visium tissues' mean over "
        "eight seeds (docs/benchmarks.md, the neighbourhood features as the default)",
        cli=False,
        kw_only=True,
    )
    n_pcs: int | None = _setting(
        None,
        "principal components of each cell's expression (centred or scaled genes, see scaling) that the "
        "model input is built from",
        "50 per-cell components feed the neighbourhood features (as many as BANKSY's PCA of a cell keeps "
        "apart from noise); with --features expression, per kind of gene set (see RECIPES and gene_set_kind): "
        "a transcriptome (more genes than n_top_genes) keeps 200 components of each cell's own expression, a "
        "panel kept whole 20 components of neighbourhood means, averaged once more (docs/benchmarks.md, a "
        "transcriptome's own input)",
        positive=True,
        shown="50; with --features expression 200 for a transcriptome, 20 for a panel",
    )
    features: str = _setting(
        "neighborhood",
        "the model's input: neighborhood (BANKSY's features: each cell's components beside the "
        "Gaussian-weighted mean and the gradient of its --neighborhood-k nearest neighbours) or expression "
        "(components of the cells' own expression, or of their neighbourhood means for a panel; see n_pcs)",
        "over eight seeds of every tissue of the development panel, the neighbourhood features lead on the "
        "single-cell panels and the legacy-ST tumours, tie the Visium tissues on the mean (expression leads "
        "their median, with two modes of training), and move less from seed to seed; measured in "
        "docs/benchmarks.md (the neighbourhood features as the default). Compare both on an annotated section "
        "of your own (stepgraph bench domains --set features=expression)",
        choices=("expression", "neighborhood"),
        kw_only=True,
    )
    neighborhood_k: int = _setting(
        15,
        "neighbourhood features: neighbours of the mean (the gradient uses twice as many)",
        "BANKSY's k_geom for single cells and domains; about two rings of a Visium lattice",
        positive=True,
        kw_only=True,
    )
    neighborhood_lambda: float = _setting(
        0.8,
        "neighbourhood features: weight of the neighbourhood against the cell itself, in [0, 1)",
        "BANKSY's lambda for domains (0.2 is its choice for cell types)",
        kw_only=True,
    )
    neighborhood_components: int = _setting(
        30,
        "neighbourhood features: principal components of the cell, mean and gradient blocks",
        "as many as the embedding's dimensions",
        positive=True,
        cli=False,
        kw_only=True,
    )
    feature_max_cells: int = _setting(
        20_000,
        "cells, drawn at random, that fit the genes, their centring and scaling, and the components",
        "20,000 cells estimate them well and keep the fit small on a tissue of millions of cells",
        cli=False,
        kw_only=True,
    )
    feature_clip: float = _setting(
        10.0,
        "centred (or scaled) genes are clipped to [-clip, clip]",
        "scanpy's scale clips z-scores at 10 (BANKSY too): the clip bounds the weight of a few extreme cells; "
        "centred log values (log1p of 10,000 is 9.2) rarely reach it",
        cli=False,
        kw_only=True,
    )
    feature_smooth: int | None = _setting(
        None,
        "rounds of averaging of the input features over each neighbourhood",
        "0 with the neighbourhood features, which hold the neighbourhood's mean themselves; with --features "
        "expression, per kind of gene set (see n_pcs): 0 for a transcriptome, whose model attends to each "
        "neighbour's own expression (STAGATE's input); 1 for a panel (a cell's input is the mean over itself and "
        "its neighbours)",
        cli=False,
        kw_only=True,
    )
    method: str = _setting(
        "radius",
        "graph construction",
        "unlike a fixed k, a radius does not reach across holes and tissue edges",
        choices=METHODS,
    )
    n_neighbors: int = _setting(
        6,
        "neighbours per cell for knn, per ring for grid",
        "the graph radius is set from the distance to the 6th nearest neighbour: the first ring of a Visium lattice",
        positive=True,
    )
    radius: float | None = _setting(
        None,
        "radius for method=radius; prunes longer edges for knn/delaunay",
        "a fixed radius needs the data's units; graph_scale sets it from the data's own spacing",
        shown="none",
        positive=True,
    )
    graph_scale: float = _setting(
        1.2,
        "without --radius, method=radius joins cells closer than this times the median distance to "
        "the --n-neighbors-th nearest neighbour",
        "in the data's units: the first ring of a Visium lattice (6 spots), about 8 cells at irregular positions",
        positive=True,
    )
    epochs: int | None = _setting(
        None,
        "maximum epochs; by default sized to the tissue: enough epochs for --train-budget training "
        "cells, at most max_epochs (50)",
        "an upper bound that early stopping usually undercuts; a large tissue needs fewer passes (see train_budget)",
        positive=True,
        shown="sized to the tissue",
    )
    batch_size: int = _setting(
        1024,
        "seed cells per batch",
        "a batch's sampled neighbourhoods stay small in memory while an epoch of a large tissue takes few steps",
        positive=True,
    )
    fanout: list[int] | None = _setting(
        None,
        "neighbours sampled per hop, comma separated (-1: all); one encoder layer per hop",
        "per kind of gene set (see n_pcs): one hop of 10 for a transcriptome (one attention layer over the "
        "first ring, as STAGATE's encoder), two hops of 10 and 5 for a panel; 10 and 5 cover a radius graph's "
        "6 to 8 neighbours and bound the size of a batch",
        shown="10 for a transcriptome, 10,5 for a panel",
    )
    hidden_dim: int | None = _setting(
        None,
        "width of the encoder's hidden layer",
        "per kind of gene set (see n_pcs): 256 for a transcriptome's 200 input components, 64 for a "
        "panel's 20; the model stays small enough to train on a CPU (measured in docs/benchmarks.md)",
        cli=False,
    )
    latent_dim: int = _setting(
        30,
        "dimensions of the embedding",
        "STAGATE's and GraphST's 30: room for tens of domains, few enough for a Gaussian mixture with one"
        " shared covariance to fit (measured against 16 in docs/benchmarks.md, several sections)",
        cli=False,
    )
    conv: str = _setting(
        "gat",
        "graph convolution of the encoder",
        "attention over the neighbours (STAGATE) lets a cell at a domain border weigh the neighbours of its own side",
        choices=("gat", "gcn", "sage"),
    )
    activation: str = _setting(
        "elu",
        "non-linearity of the encoder",
        "STAGATE's choice with attention layers",
        cli=False,
        choices=("elu", "relu"),
    )
    lr: float = _setting(
        0.003,
        "learning rate",
        "a small model trains stably at three times Adam's usual 1e-3 and reaches its plateau in fewer epochs",
    )
    split_rate: float = _setting(
        0.1,
        "share of cells held out for validation",
        "a tenth of the cells measures the validation loss for early stopping; 90% train",
    )
    patience: int = _setting(
        5,
        "early-stopping patience in epochs",
        "five epochs without an improvement larger than delta end training",
        positive=True,
    )
    delta: float = _setting(
        1e-3,
        "smallest decrease of the validation loss that counts as an improvement",
        "gains below 0.001 are noise on the reconstruction loss of the input components, so training stops on a plateau "
        "instead of creeping on",
        cli=False,
        kw_only=True,
    )
    smooth: int = _setting(
        1,
        "rounds of averaging of the embedding over each neighbourhood before clustering",
        "domains are contiguous",
        cli=False,
    )
    cluster: str = _setting(
        "gmm",
        "clustering of the embedding into domains",
        "a Gaussian mixture with one shared covariance is mclust's EEE, which STAGATE and GraphST use; "
        "k-means is the alternative",
        choices=CLUSTER_METHODS,
    )
    covariance_type: str = _setting(
        "tied",
        "covariance of the Gaussian mixture (tied, full, diag or spherical)",
        "one covariance shared by every domain: mclust's EEE",
        cli=False,
        choices=("tied", "full", "diag", "spherical"),
        kw_only=True,
    )
    gmm_n_init: int = _setting(
        10,
        "fits of the Gaussian mixture from different k-means starts; the most likely is kept",
        "the most likely of 10 starts: fewer starts left some seeds in a less likely fit with worse "
        "domains, more found the same fits; the fit stays seconds at 100,000 cells (measured in "
        "docs/benchmarks.md, the clustering)",
        cli=False,
        kw_only=True,
    )
    gmm_screen_rows: int | None = _setting(
        None,
        "screen the Gaussian mixture's starts on this many random cells and refine the gmm_refine most "
        "likely on all the fitted cells (None: every start is fitted on all of them)",
        "screening 30 starts on 5,000 cells finds the same fit of an embedding whatever the seed and is "
        "faster on a large tissue, but it did not lower the pipeline's seed spread (the model's training "
        "sets it) and lost on the 8-patient legacy ST tissue (measured in docs/benchmarks.md, seed-stable "
        "clustering)",
        cli=False,
        kw_only=True,
    )
    gmm_refine: int = _setting(
        3,
        "with gmm_screen_rows: the most likely screened starts that are run on all the fitted cells",
        "a start that converges slowly can rank second on the screen and first once converged",
        cli=False,
        kw_only=True,
    )
    gmm_tol: float | None = _setting(
        1e-5,
        "the most likely start of the Gaussian mixture then runs on until its mean log-likelihood per cell "
        "rises by less than this (None: it stops at scikit-learn's 1e-3, as each start does)",
        "EM converged: at 1e-3 per cell the mixture can still be moving, and the domains then depend on "
        "where it was cut off; 1e-6 gives the domains of 1e-5, and the extra iterations cost less than "
        "another start (measured in docs/benchmarks.md, converged mixtures)",
        cli=False,
        kw_only=True,
    )
    kmeans_n_init: int = _setting(
        10,
        "k-means runs from different starts; the lowest within-cluster sum of squares is kept",
        "scikit-learn's classic ten k-means++ starts (before n_init='auto'); cheap on a small embedding",
        cli=False,
        kw_only=True,
    )
    cluster_max_rows: int | None = _setting(
        100_000,
        "the Gaussian mixture is fitted on at most this many cells, drawn at random (None: all); "
        "every cell is then assigned",
        "100,000 cells estimate a few tens of components well and keep a tissue of millions to seconds",
        cli=False,
        kw_only=True,
    )
    refine: bool = _setting(
        False,
        "relabel a cell whose neighbours mostly carry another domain",
        "the neighbour-majority relabelling of SpaGCN and GraphST changed the ARI on DLPFC by less than "
        "0.005 either way (measured in docs/benchmarks.md); turn it on for smoother domain borders in "
        "figures",
    )
    n_domains: int | None = _setting(
        None,
        "clusters in the domain assignment",
        "the number of true domains when truth_key names them, else n_domains_default",
        positive=True,
        shown="categories of --truth-key, else {n_domains_default}",
    )
    n_domains_default: int = _setting(
        7,
        "domains when neither n_domains nor truth_key gives their number",
        "the six cortical layers and the white matter of most DLPFC sections, the field's shared benchmark",
        cli=False,
        kw_only=True,
    )
    truth_key: str | None = _setting(
        None, "obs column of known domains, to report the ARI", "no truth is assumed", shown="none"
    )
    seed: int = _setting(
        0, "seed of split, sampling and initialisation", "a run is reproducible unless asked otherwise"
    )
    device: str = _setting("cpu", "cpu or cuda", "runs on every machine; pass cuda on a GPU")
    precision: str = _setting(
        "32",
        "forward passes in float32 (32) or under bfloat16 autocast (bf16-mixed), as Lightning names them",
        "float32 everywhere; bf16-mixed pays on GPUs with bfloat16 units, while on a CPU it is often slower",
        choices=("32", "bf16-mixed"),
        kw_only=True,
    )
    threads: int | None = _setting(
        None,
        "torch threads (the command line sets them before the run)",
        "one thread per usable CPU not busy with other tasks (stepgraph.train.threads): several jobs on "
        "a shared machine then do not fight over the same cores",
        positive=True,
        shown="auto",
        kw_only=True,
    )
    dist_timeout: float = _setting(
        900.0,
        "seconds a rank waits for the others under torchrun before the job ends with an error",
        "a rank that stops answering (a frozen node, a lost GPU) must not hold the others forever; 15 "
        "minutes outlast any one training step or checkpoint write",
        positive=True,
        kw_only=True,
    )
    backend: str = _setting(
        "builtin",
        "neighbour sampler of the loaders",
        "the built-in sampler: uniform, seeded, no compiled extension needed",
        cli=False,
        choices=("auto", "builtin", "pyg"),
    )
    progress: bool = _setting(
        True,
        "progress bars (plain lines off a terminal); --quiet turns them off",
        "a long run tells how far it is",
        flag="--quiet",
    )
    init_weights: str | None = _setting(
        None,
        "start from the model weights of this checkpoint (best.pt or last.pt of an earlier run); "
        "training itself starts afresh",
        "a new run starts from random weights",
        shown="none",
        metavar="CHECKPOINT",
    )
    resume_from: str | None = _setting(
        None,
        "a training state (checkpoints/last.pt of an earlier run with the same settings) to continue "
        "exactly where it stopped; on the CLI, --resume sets it",
        "a new run starts afresh",
        cli=False,
    )
    trust_checkpoint: bool = _setting(
        False,
        "load --init-weights / --resume checkpoints in full, objects other than tensors included; a "
        "checkpoint can then run code: only for files you trust",
        "checkpoints may come from strangers: only tensors and plain types load by default",
    )
    backed: bool = _setting(
        False,
        "keep X on disk (read the file backed) and compute the input features from chunks of rows; "
        "memory then holds the graph, not the expression matrix",
        "in memory is faster whenever X fits",
    )
    train_budget: int = _setting(
        2_000_000,
        "without --epochs: cells visited in training (seed cells of all batches, over all epochs); "
        "epochs = min(max_epochs, ceil(train_budget / training cells))",
        "fewer passes over a larger tissue, as scvi-tools sizes its epochs: on a synthetic tissue the "
        "validation loss levels off after about a quarter of this budget; tissues under 40,000 cells keep"
        " max_epochs and early stopping, a 1,000,000-cell tissue trains 3 epochs instead of 50 (measured "
        "in docs/benchmarks.md, a million cells)",
        positive=True,
        kw_only=True,
    )
    max_epochs: int = _setting(
        50,
        "the most epochs of a run sized to the tissue (without --epochs)",
        "an upper bound: early stopping ends a small tissue's run earlier",
        cli=False,
        kw_only=True,
    )
    table_key: str | None = _setting(
        None,
        "the table of a SpatialData .zarr input (tables/<name>); its coordinates are obsm[spatial_key], "
        "else the centroids of the shapes or points it annotates (see stepgraph.data.readers)",
        "a store with one table, or one named 'table' (spatialdata-io's readers), needs no name",
        shown="the only table, or 'table'",
        kw_only=True,
    )

    def epochs_for(self, n_train: int) -> int:
        """The epochs of a run with ``n_train`` training cells: :attr:`epochs` when set,
        else ``min(max_epochs, ceil(train_budget / n_train))`` (at least 1).
        """
        if self.epochs is not None:
            return self.epochs
        return max(1, min(self.max_epochs, -(-self.train_budget // max(1, n_train))))

    def resolved(self, n_genes: int) -> PipelineConfig:
        """This config for an input of ``n_genes`` genes: a copy whose fields left at ``None``
        (``n_pcs``, ``feature_smooth``, ``fanout``, ``hidden_dim``) hold the values of the
        :data:`RECIPES` entry of :func:`gene_set_kind` (with ``features="neighborhood"``, ``n_pcs`` 50
        per-cell components, not averaged); the fields set explicitly are kept.
        """
        recipe = dict(RECIPES[gene_set_kind(n_genes, self.n_top_genes)])
        if self.features == "neighborhood":  # per-cell components feed the neighbourhood blocks
            recipe.update(n_pcs=50, feature_smooth=0)
        chosen = {
            name: list(value) if isinstance(value, list) else value
            for name, value in recipe.items()
            if getattr(self, name) is None
        }
        return replace(self, **chosen)

    def _check_resolved(self) -> None:
        unset = [name for name in RECIPES["panel"] if getattr(self, name) is None]
        if unset:
            raise ValueError(
                f"{', '.join(unset)} of this PipelineConfig are left to the gene set: call "
                "config.resolved(n_genes) first"
            )

    def feature_options(self) -> dict:
        """Every argument of :class:`~stepgraph.pipeline.preprocess.ExpressionFeatures`, from this
        config (a :meth:`resolved` one).
        """
        self._check_resolved()
        return {
            "n_top_genes": self.n_top_genes,
            "n_components": self.n_pcs,
            "scaling": self.scaling,
            "max_cells": self.feature_max_cells,
            "clip": self.feature_clip,
            "seed": self.seed,
            "target_sum": self.target_sum,
        }

    def cluster_options(self) -> dict:
        """Every argument of :func:`~stepgraph.pipeline.domains.cluster_domains` but the embedding
        and the number of domains, the options of its ``method`` included.
        """
        options = {"method": self.cluster, "seed": self.seed}
        if self.cluster == "gmm":
            options.update(
                covariance_type=self.covariance_type,
                n_init=self.gmm_n_init,
                max_fit_rows=self.cluster_max_rows,
                tol=self.gmm_tol,
                screen_rows=self.gmm_screen_rows,
                n_refine=self.gmm_refine,
            )
        elif self.cluster == "kmeans":
            options.update(n_init=self.kmeans_n_init)
        return options


def _default(f):
    return f.default_factory() if f.default is MISSING else f.default


def cli_option(f) -> str | None:
    """The option of ``stepgraph train`` that sets field ``f`` of
    :class:`PipelineConfig` (``--n-top-genes`` for ``n_top_genes``), or
    ``None`` for a field that is not on the command line.
    """
    if not f.metadata.get("cli", True):
        return None
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def defaults_table() -> str:
    """The defaults of :class:`PipelineConfig` and their reasons, a markdown
    table (one row per field: setting and option, default, what it sets,
    why this default); the user guide shows it.
    """
    rows = ["| setting | default | what it sets | why this default |", "| --- | --- | --- | --- |"]
    for f in fields(PipelineConfig):
        option = cli_option(f)
        setting = f"`{f.name}`" + (f" (`{option}`)" if option else "")
        rows.append(f"| {setting} | `{_default(f)!r}` | {f.metadata['help']} | {f.metadata['reason']} |")
    return "\n".join(rows) + "\n"


def _defaults_doc() -> str:
    lines = ["", "    Notes", "    -----", "    The defaults, each with what it sets and why:", ""]
    for f in fields(PipelineConfig):
        meta = f.metadata
        lines.append(f"    - ``{f.name}={_default(f)!r}``: {meta['help']}. *Why:* {meta['reason']}.")
    return "\n".join(lines) + "\n"


if PipelineConfig.__doc__:  # None under python -OO
    PipelineConfig.__doc__ += _defaults_doc()
