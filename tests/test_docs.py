"""The documentation runs, builds and stays complete.

- the ```python block(s) of docs/quickstart.md run as written;
- the Sphinx site (the guides of docs/ and the API reference built from the
  docstrings by docs/conf.py) builds with warnings as errors, as ``make docs`` does;
- the built reference (its ``objects.inv`` inventory and doctrees) has an entry
  for every public module, every name of ``stepgraph.__all__``, the public
  methods and properties of the main classes and the trainer's attributes; the
  entries of functions, classes and methods document every real parameter and
  none that does not exist; its command-line page has every command and option;
- every ```python block in docs/ is valid Python;
- links between README.md and the pages of docs/ (and their #anchors) resolve.
"""

from __future__ import annotations

import argparse
import ast
import functools
import inspect
import pickle
import pkgutil
import re
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import stepgraph
from stepgraph import BaseDataset, EarlyStopping, LossMeter, MaskedDataset, Trainer
from stepgraph.train.checkpointing import BestWeights, TrainingCheckpoint
from stepgraph.train.early_stopping import EarlyStoppingGroup
from stepgraph.train.loop import LoopState

DOCS = Path(__file__).resolve().parents[1] / "docs"
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
BUILD_SECONDS = 300  # the build takes about 20 s of CPU on 2 cores; this only catches a runaway


def python_blocks(name: str) -> list[str]:
    return FENCE.findall((DOCS / name).read_text(encoding="utf-8"))


def qualified(obj) -> str:
    """Where ``obj`` is documented: the module that defines it, plus its qualified name."""
    return f"{obj.__module__}.{obj.__qualname__}"


def public_members(cls) -> list[tuple[type, str]]:
    """``(defining class, name)`` of the public methods and properties of ``cls``
    that stepgraph defines (inherited ones are documented under their owner)."""
    members = []
    for name, value in inspect.getmembers(cls):
        if name.startswith("_") or name in dir(object):
            continue
        if not (inspect.isfunction(value) or isinstance(inspect.getattr_static(cls, name), property)):
            continue
        owner = next(c for c in cls.__mro__ if name in vars(c))
        if owner.__module__.startswith("stepgraph"):
            members.append((owner, name))
    return members


# ---------------------------------------------------------------- quickstart
def test_quickstart_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the block's mkdtemp() lands here
    blocks = python_blocks("quickstart.md")
    assert blocks, "docs/quickstart.md has no ```python block"
    namespace: dict = {"__name__": "__quickstart__"}
    for block in blocks:
        exec(compile(block, str(DOCS / "quickstart.md"), "exec"), namespace)

    adata, trainer = namespace["adata"], namespace["trainer"]
    emb = adata.obsm["X_stepgraph"]
    assert emb.shape == (2000, namespace["model"].latent_dim)
    assert np.isfinite(emb).all()
    assert (np.abs(emb).sum(axis=1) > 0).all()  # every cell was predicted
    assert trainer.history and {"recon_loss", "val_recon_loss"} <= set(trainer.history[-1])
    assert trainer.history[-1]["recon_loss"] < trainer.history[0]["recon_loss"]
    assert adata.obs["stepgraph_domain"].nunique() == 5
    assert (namespace["tmp"] / "checkpoints" / "best.pt").is_file()
    assert "ARI:" in capsys.readouterr().out


# ------------------------------------------------------------------- the site
class Site:
    """One build of the site, as ``make docs`` runs it, into a temporary folder."""

    def __init__(self, out: Path):
        self.html, self.doctrees = out / "html", out / "doctrees"
        self.inventory = read_inventory(self.html / "objects.inv")

    def documented(self, name: str, *roles: str) -> bool:
        """``name`` has an entry of its own (not an alias) of one of ``roles`` (any when none)."""
        return any(priority >= 0 and (not roles or role in roles) for role, priority in self.inventory.get(name, ()))

    def doctree(self, docname: str):
        import sphinx.addnodes  # noqa: F401  (the node classes the pickle refers to)

        with open(self.doctrees / f"{docname}.doctree", "rb") as f:
            return pickle.load(f)

    @functools.cached_property
    def descriptions(self) -> dict:
        """``{qualified name: the desc node}`` of every Python object described in the reference."""
        from sphinx import addnodes

        found = {}
        for path in sorted((self.doctrees / "api").glob("*.doctree")):
            for desc in self.doctree(f"api/{path.stem}").findall(addnodes.desc):
                if desc.get("domain") != "py":
                    continue
                for sig in desc.children:  # its own signatures, not those of its members
                    if isinstance(sig, addnodes.desc_signature) and sig.get("fullname"):
                        found.setdefault(f"{sig['module']}.{sig['fullname']}", desc)
        return found


def read_inventory(path: Path) -> dict[str, list[tuple[str, int]]]:
    """``{name: [(domain:role, priority), ...]}`` of a Sphinx ``objects.inv`` (priority -1: an alias)."""
    with open(path, "rb") as f:
        for _ in range(4):  # the header: format, project, version, compression
            f.readline()
        text = zlib.decompress(f.read()).decode("utf-8")
    entries: dict[str, list[tuple[str, int]]] = {}
    for line in text.splitlines():
        match = re.match(r"(.+?)\s+(\S+:\S+)\s+(-?\d+)\s+\S+\s+.*$", line)
        assert match, f"unreadable inventory line {line!r}"
        entries.setdefault(match.group(1), []).append((match.group(2), int(match.group(3))))
    return entries


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Site:
    out = tmp_path_factory.mktemp("site")
    command = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-q",
        "-j",
        "1",
        "-b",
        "html",
        "-d",
        str(out / "doctrees"),
        str(DOCS),
        str(out / "html"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_SECONDS)
    if result.returncode:
        pytest.fail(
            f"the docs do not build with warnings as errors ({' '.join(command)}):\n{result.stderr[-6000:]}",
            pytrace=False,
        )
    return Site(out)


def test_the_site_builds_with_warnings_as_errors(site):
    for page in ["index", "api/index", *(p.stem for p in DOCS.glob("*.md") if p.stem != "index")]:
        assert (site.html / f"{page}.html").is_file(), f"the site has no page {page}"


PUBLIC_MODULES = sorted(
    [
        "stepgraph",
        *(
            m.name
            for m in pkgutil.walk_packages(stepgraph.__path__, prefix="stepgraph.")
            if not any(part.startswith("_") for part in m.name.split("."))
        ),
    ]
)


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_module_is_in_the_api_reference(site, module):
    assert site.documented(module, "py:module"), f"{module} has no entry in the API reference"


@pytest.mark.parametrize("name", stepgraph.__all__)
def test_every_exported_name_is_in_the_api_reference(site, name):
    obj = getattr(stepgraph, name)
    if name == "__version__":
        assert site.documented("stepgraph.__version__", "py:data")
        return
    assert site.documented(qualified(obj)), f"stepgraph.{name} ({qualified(obj)}) is not in the API reference"
    assert f"stepgraph.{name}" in site.inventory, f"stepgraph.{name} does not link to its entry"
    from sphinx import addnodes

    listed = {x.get("reftarget") for x in site.doctree("api/index").findall(addnodes.pending_xref)}
    assert f"stepgraph.{name}" in listed, f"stepgraph.{name} is not listed on the API reference's first page"


DOCUMENTED_CLASSES = (
    Trainer,
    EarlyStopping,
    EarlyStoppingGroup,
    LossMeter,
    LoopState,
    BestWeights,
    TrainingCheckpoint,
    BaseDataset,
    MaskedDataset,
)
EXPECTED_CLASS_MEMBERS = sorted(
    {f"{qualified(owner)}.{name}" for cls in DOCUMENTED_CLASSES for owner, name in public_members(cls)}
)


@pytest.mark.parametrize("name", EXPECTED_CLASS_MEMBERS)
def test_every_public_member_is_in_the_api_reference(site, name):
    assert site.documented(name, "py:method", "py:property", "py:attribute"), f"{name} is not in the API reference"


TRAINER_ATTRIBUTES = [
    "model",
    "optimizer",
    "lr_scheduler",
    "early_stopping",
    "lossconfig",
    "defualt_lcfg",
    "default_lcfg",
    "history",
    "stop_reason",
    "best",
    "skipped_batches",
    "interrupted",
    "graph_dataset",
    "device",
    "seed",
]


@pytest.mark.parametrize("name", TRAINER_ATTRIBUTES)
def test_trainer_attributes_are_documented(site, name):
    assert site.documented(f"{qualified(Trainer)}.{name}", "py:attribute", "py:property"), (
        f"Trainer.{name} is not in the API reference"
    )


def _parameters(func) -> tuple[list[str], list[str]]:
    """The parameters a caller passes (``*args``/``**kwargs`` aside), and every parameter's name."""
    params = [p for p in inspect.signature(func).parameters.values() if p.name not in ("self", "cls")]
    return ([p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)], [p.name for p in params])


def _documented_parameters(desc) -> list[str]:
    """The names in the Parameters (and Other Parameters) fields of a built entry."""
    from docutils import nodes
    from sphinx import addnodes

    content = next(child for child in desc.children if isinstance(child, addnodes.desc_content))
    names = []
    for field_list in content.children:
        if not isinstance(field_list, nodes.field_list):
            continue
        for field in field_list.children:
            if field[0].astext() not in ("Parameters", "Other Parameters"):
                continue
            for paragraph in field[1].findall(nodes.paragraph):
                first = paragraph.children[0] if paragraph.children else None
                if isinstance(first, (addnodes.literal_strong, nodes.strong)):
                    names += [n.strip().lstrip("*") for n in first.astext().split(",")]
    return names


FUNCTIONS = {
    name: getattr(stepgraph, name) for name in stepgraph.__all__ if inspect.isfunction(getattr(stepgraph, name))
}
CLASSES = {
    name: getattr(stepgraph, name)
    for name in stepgraph.__all__
    if inspect.isclass(getattr(stepgraph, name)) and name != "NonFiniteLossError"
}
METHODS = {
    f"{owner.__name__}.{name}": getattr(owner, name)
    for cls in (Trainer, EarlyStopping, LossMeter, BaseDataset)
    for owner, name in public_members(cls)
    if inspect.isfunction(getattr(owner, name))
}
SIGNATURES = {**FUNCTIONS, **CLASSES, **METHODS}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_documented_parameters_match_the_signature(site, name):
    obj = SIGNATURES[name]
    entry = qualified(obj)
    assert entry in site.descriptions, f"{entry} is not described in the API reference"
    documented = _documented_parameters(site.descriptions[entry])
    passed, real = _parameters(obj)
    missing = [p for p in passed if p not in documented]
    unknown = [p for p in documented if p not in real]
    assert not missing, f"{entry}: parameters {missing} are not documented"
    assert not unknown, f"{entry}: documents parameters {unknown} that it does not take"


def _commands(parser: argparse.ArgumentParser, prefix: str = "stepgraph"):
    """``(command, its parser)`` for ``stepgraph`` and every sub-command, depth first."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{prefix} {name}")


def test_cli_commands_and_options_are_in_the_api_reference(site):
    from docutils import nodes

    from stepgraph.cli import build_parser

    sections = {section[0].astext(): section for section in site.doctree("api/cli").findall(nodes.section)}
    for command, parser in _commands(build_parser()):
        assert command in sections, f"`{command}` has no section in the command-line reference"
        text = "".join(block.astext() for block in sections[command].findall(nodes.literal_block))
        for action in parser._actions:
            for option in action.option_strings:
                assert option in text, f"`{command} {option}` is not in the command-line reference"


# -------------------------------------------------------------------- syntax
@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_python_blocks_are_valid_python(page):
    for block in python_blocks(page):
        ast.parse(block)


# --------------------------------------------------------------------- links
def _slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", ["README.md", *sorted(f"docs/{p.name}" for p in DOCS.glob("*.md"))])
def test_links_between_pages_resolve(page):
    root = DOCS.parent
    source = root / page
    text = re.sub(r"^```.*?^```", "", source.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)
    for target in re.findall(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = source if not path else (source.parent / path).resolve()
        assert file.is_file(), f"{page}: link to missing {target}"
        if anchor and file.suffix == ".md":
            body = re.sub(r"^```.*?^```", "", file.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)
            anchors = {_slug(h) for h in re.findall(r"^#+ (.*)$", body, re.MULTILINE)}
            assert anchor in anchors, f"{page}: link to missing anchor {target}"
