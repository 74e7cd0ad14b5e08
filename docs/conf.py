"""Sphinx configuration: the guides (markdown) and the API reference, built from the docstrings.

Build with ``make docs`` (warnings are errors). The small extensions defined here:

- ``.. automodules:: PACKAGE`` documents every public module of a package (one
  section and one ``automodule`` each), so a module that is added, split or
  renamed is documented without editing a page;
- ``.. stepgraph-help::`` shows the ``--help`` of every command, generated from
  :func:`stepgraph.cli.build_parser` at build time;
- every name a package re-exports in its ``__all__`` (``stepgraph.Trainer``,
  ``stepgraph.graph.spatial_graph``) is registered as an alias of the object's
  entry in its defining module, so ``:class:`stepgraph.Trainer``` links to the
  one place where ``Trainer`` is documented, and the inventory knows both names;
- napoleon leaves the one-paragraph docstrings of attributes and data alone.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.ext import napoleon
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

import stepgraph

project = "stepgraph"
author = "the stepgraph developers"
copyright = "stepgraph developers"
release = version = stepgraph.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# numpy-style docstrings (and PyG-style "Args:"); each object is documented once,
# in the module that defines it
napoleon_google_docstring = True  # data/sampler.py and models/ follow PyG's style
napoleon_numpy_docstring = True
autodoc_default_options = {"members": True, "member-order": "bysource", "ignore-module-all": True}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_class_signature = "mixed"
autosummary_generate = False
add_module_names = False
python_display_short_literal_types = True

# markdown guides: GitHub's heading anchors, so `user-guide.md#early-stopping` resolves
myst_heading_anchors = 3

try:
    import furo  # noqa: F401
    html_theme = "furo"
except ImportError:  # the default theme is fine
    html_theme = "alabaster"
html_title = f"stepgraph {release}"
html_static_path: list[str] = []


def _public_modules(package: str) -> list[str]:
    """Every public module under ``package`` (none of its parts starts with ``_``)."""
    pkg = importlib.import_module(package)
    return [m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}.")
            if not any(part.startswith("_") for part in m.name.split("."))]


class AutoModules(SphinxDirective):
    """``.. automodules:: PACKAGE``: a section with an ``automodule`` for each public module.

    The content may list module names (relative to the package) to put first;
    the other modules follow in alphabetical order, and names that no longer
    exist are ignored.
    """

    required_arguments = 1
    has_content = True

    def run(self) -> list[nodes.Node]:
        package = self.arguments[0]
        found = _public_modules(package)
        first = [f"{package}.{name.strip()}" for name in self.content if name.strip()]
        ordered = [m for m in first if m in found] + sorted(m for m in found if m not in first)
        lines: list[str] = []
        for module in ordered:
            title = f"``{module}``"
            lines += [title, "-" * len(title), "", f".. automodule:: {module}", ""]
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source=self.get_source_info()[0]), container)
        return container.children


class CommandLineHelp(SphinxDirective):
    """``.. stepgraph-help::``: the ``--help`` text of ``stepgraph`` and of every sub-command."""

    def run(self) -> list[nodes.Node]:
        from stepgraph import cli
        from stepgraph.pipeline import config

        for module in (cli, config):  # the options come from both: rebuild the page when they change
            self.env.note_dependency(module.__file__)
        lines: list[str] = []

        def add(parser: argparse.ArgumentParser, command: str) -> None:
            with _plain_help(88):
                text = parser.format_help()
            title = f"``{command}``"
            lines.extend([title, "-" * len(title), "", "::", ""])
            lines.extend(f"   {line}" if line else "" for line in text.splitlines())
            lines.append("")
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    for name, sub in action.choices.items():
                        add(sub, f"{command} {name}")

        add(cli.build_parser(), "stepgraph")
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source=self.get_source_info()[0]), container)
        return container.children


@contextlib.contextmanager
def _plain_help(width: int):
    """argparse wraps help to $COLUMNS (and Python 3.14 colours it): the same text on every machine."""
    saved = {key: os.environ.get(key) for key in ("COLUMNS", "NO_COLOR")}
    os.environ.update(COLUMNS=str(width), NO_COLOR="1")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _alias_reexported_names(app, env) -> list[str]:
    """Register ``package.name`` for every name of a package's ``__all__`` (and its members)."""
    py = env.get_domain("py")
    objects = py.objects
    for package in ["stepgraph", *_public_modules("stepgraph")]:
        module = importlib.import_module(package)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name, None)
            owner = getattr(obj, "__module__", None)
            qualname = getattr(obj, "__qualname__", None)
            if not owner or not qualname or owner == package:
                continue
            target, alias = f"{owner}.{qualname}", f"{package}.{name}"
            for fullname, entry in list(objects.items()):
                if fullname == target or fullname.startswith(target + "."):
                    aliased = alias + fullname[len(target):]
                    if aliased not in objects:
                        objects[aliased] = entry._replace(aliased=True)
    return []


def _napoleon_except_attributes(app, what, name, obj, options, lines) -> None:
    """Napoleon, except on the one-paragraph docstrings of attributes, data and properties.

    Napoleon reads the first line of those as ``type: description``, and
    stepgraph's prose ("The run's summary: epochs, scores, ...") would lose its
    first words to a bogus type.
    """
    if what not in ("attribute", "data", "property"):
        napoleon._process_docstring(app, what, name, obj, options, lines)


def setup(app):
    for listener in list(app.events.listeners["autodoc-process-docstring"]):
        if listener.handler is napoleon._process_docstring:
            app.disconnect(listener.id)
            app.connect("autodoc-process-docstring", _napoleon_except_attributes, priority=listener.priority)
    app.add_directive("automodules", AutoModules)
    app.add_directive("stepgraph-help", CommandLineHelp)
    app.connect("env-updated", _alias_reexported_names)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
