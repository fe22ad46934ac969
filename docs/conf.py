"""Sphinx configuration of the sccvae documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html`` (``pip install 'sccvae[docs]'``).
Tutorial notebooks live in ``../tutorials`` and are committed with their outputs: they are
copied into ``docs/tutorials/`` at build time and rendered without being executed.
"""

from __future__ import annotations

import importlib.util
import shutil
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# -- project -------------------------------------------------------------------------------
project = "sccvae"
author = "sccvae developers"
copyright = f"{date.today().year}, {author}"
try:
    release = version("sccvae")
except PackageNotFoundError:  # building from a source tree without installing
    release = "0.0.0"
version = release

# -- extensions ----------------------------------------------------------------------------
extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "jupyter_execute"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
nitpicky = False  # no intersphinx offline: references to third-party types stay plain text

# autodoc / autosummary: numpy docstrings; types are in the docstrings, not the signatures
autosummary_generate = True
autosummary_imported_members = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autoclass_content = "class"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = True
# "Attributes" sections as fields: dataclass fields are also documented as members, and
# attribute directives would describe them twice.
napoleon_use_ivar = True
napoleon_custom_sections = [("Params", "params_style")]

# MyST / myst-nb: notebooks are committed with outputs and never executed here
myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"
nb_merge_streams = True

# -- HTML ------------------------------------------------------------------------------------
if importlib.util.find_spec("sphinx_book_theme") is not None:
    html_theme = "sphinx_book_theme"
    html_theme_options = {
        "repository_url": "https://github.com/sccvae/sccvae",
        "use_repository_button": False,
    }
else:  # pragma: no cover - the docs extra installs it
    html_theme = "alabaster"
html_title = "sccvae"
html_static_path = ["_static"]
html_show_sourcelink = False

# -- optional pages: tutorials and benchmarks --------------------------------------------------
# Notebooks are copied from ../tutorials; pages whose source is missing are dropped from the
# toctrees (a glob matching nothing would warn and fail a -W build).
TUTORIALS_SRC = ROOT / "tutorials"
TUTORIALS_DST = HERE / "tutorials"


def _sync_tutorials() -> list[str]:
    notebooks = sorted(TUTORIALS_SRC.glob("*.ipynb")) if TUTORIALS_SRC.is_dir() else []
    TUTORIALS_DST.mkdir(exist_ok=True)
    wanted = {nb.name for nb in notebooks}
    for stale in TUTORIALS_DST.glob("*.ipynb"):
        if stale.name not in wanted:
            stale.unlink()
    for nb in notebooks:
        target = TUTORIALS_DST / nb.name
        if not target.exists() or target.read_bytes() != nb.read_bytes():
            shutil.copyfile(nb, target)
    return [nb.stem for nb in notebooks]


TUTORIALS = _sync_tutorials()
HAS_BENCHMARKS = (HERE / "benchmarks.md").exists()


def _has_run_benchmark() -> bool:
    try:
        from sccvae import benchmark
    except ImportError:
        return False
    return hasattr(benchmark, "run_benchmark")


HAS_RUN_BENCHMARK = _has_run_benchmark()


def _optional_entries(app, docname: str, source: list[str]) -> None:
    """Drop toctree lines and API entries whose target does not exist (yet)."""
    text = source[0]
    if docname == "tutorials" and not TUTORIALS:
        text = text.replace("tutorials/*\n", "").replace(
            "<!-- no-tutorials -->",
            "No tutorial notebooks are in this build yet: they live in the `tutorials/` folder "
            "of the repository.",
        )
    elif docname == "index" and not HAS_BENCHMARKS:
        text = text.replace("\nbenchmarks\n", "\n")
    elif docname == "api" and not HAS_RUN_BENCHMARK:
        text = text.replace("   benchmark.run_benchmark\n", "")
    source[0] = text


def setup(app):
    """Register the hook that drops missing optional pages."""
    app.connect("source-read", _optional_entries)
