"""The documentation runs and stays complete.

- the ```python block(s) of docs/quickstart.md run as written;
- every public name (``stepgraph.__all__``, the public methods and properties
  of the main classes, the CLI commands) has an entry in docs/api.md, and the
  entries of functions and methods name every real parameter;
- every ```python block in docs/ is valid Python;
- links between README.md and the pages of docs/ (and their #anchors) resolve.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import tempfile
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


def python_blocks(name: str) -> list[str]:
    return FENCE.findall((DOCS / name).read_text(encoding="utf-8"))


def public_members(cls) -> list[tuple[str, str]]:
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
            members.append((owner.__name__, name))
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


# ------------------------------------------------------------- completeness
@functools.cache
def api_text() -> str:
    return (DOCS / "api.md").read_text(encoding="utf-8")


def documented(name: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", api_text()) is not None


DOCUMENTED_CLASSES = (Trainer, EarlyStopping, EarlyStoppingGroup, LossMeter, LoopState, BestWeights,
                      TrainingCheckpoint, BaseDataset, MaskedDataset)
EXPECTED_CLASS_MEMBERS = sorted({member for cls in DOCUMENTED_CLASSES
                                 for member in public_members(cls)})


@pytest.mark.parametrize("name", stepgraph.__all__)
def test_every_exported_name_is_in_the_api_reference(name):
    assert documented(name), f"stepgraph.{name} is not in docs/api.md"


@pytest.mark.parametrize("cls, name", EXPECTED_CLASS_MEMBERS)
def test_every_public_member_is_in_the_api_reference(cls, name):
    assert documented(f"{cls}.{name}") or documented(name), f"{cls}.{name} is not in docs/api.md"


TRAINER_ATTRIBUTES = ["model", "optimizer", "lr_scheduler", "early_stopping", "lossconfig", "defualt_lcfg",
                      "default_lcfg", "history", "stop_reason", "best", "skipped_batches", "interrupted",
                      "graph_dataset", "device", "seed"]


@pytest.mark.parametrize("name", TRAINER_ATTRIBUTES)
def test_trainer_attributes_are_documented(name):
    assert documented(f"Trainer.{name}") or documented(name)


def _section(heading: str, pattern: str | None = None) -> str:
    """Text of the api.md section whose heading names `heading` (or matches the
    regex ``pattern``), up to the next heading of the same or a higher level."""
    text = api_text()
    pattern = pattern or rf"`{re.escape(heading)}[`(]"
    match = re.search(rf"^(#+) .*{pattern}.*$", text, re.MULTILINE)
    assert match, f"docs/api.md has no heading for {heading!r}"
    level = len(match.group(1))
    end = re.search(rf"^#{{1,{level}}} ", text[match.end():], re.MULTILINE)
    return text[match.start(): match.end() + (end.start() if end else len(text))]


def _parameters(func) -> list[str]:
    params = [p for p in inspect.signature(func).parameters.values()
              if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    names = [p.name for p in params]
    if hasattr(func, "__wrapped_epoch__"):
        # a train_loop_formatter method: called as method(epochs, ..., writer=, resume_from=)
        names = ["epochs", *names[1:], "writer", "writer_every", "resume_from"]
    return names


FUNCTIONS = {name: getattr(stepgraph, name) for name in stepgraph.__all__
             if inspect.isfunction(getattr(stepgraph, name))}
CLASSES = {name: getattr(stepgraph, name) for name in stepgraph.__all__
           if inspect.isclass(getattr(stepgraph, name)) and name != "NonFiniteLossError"}
METHODS = {f"{owner}.{name}": getattr(cls, name) for cls in (Trainer, EarlyStopping, LossMeter, BaseDataset)
           for owner, name in public_members(cls) if inspect.isfunction(getattr(cls, name))}


@pytest.mark.parametrize("name", sorted({**FUNCTIONS, **CLASSES, **METHODS}))
def test_documented_signatures_name_every_parameter(name):
    obj = {**FUNCTIONS, **CLASSES, **METHODS}[name]
    section = _section(name)
    missing = [p for p in _parameters(obj) if not re.search(rf"\b{re.escape(p)}\b", section)]
    assert not missing, f"docs/api.md, `{name}`: parameters {missing} are not documented"


def test_cli_commands_and_options_are_documented():
    from stepgraph.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    section = _section("Command line", pattern="Command line")
    for command, sub_parser in sub.choices.items():
        assert f"stepgraph {command}" in section
        for action in sub_parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert option in section, f"`stepgraph {command} {option}` is not in docs/api.md"


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
