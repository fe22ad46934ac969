"""The documentation builds without warnings (skipped when Sphinx is not installed)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
DOCS_DEPENDENCIES = ("sphinx", "myst_nb")


@pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in DOCS_DEPENDENCIES),
    reason="Sphinx/myst-nb not installed (pip install 'sccvae[docs]')",
)
def test_docs_build_without_warnings(tmp_path):
    result = subprocess.run(
        [
            sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
            "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, (
        f"sphinx-build failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    html = tmp_path / "html"
    for page in ("index", "installation", "user_guide", "api", "tutorials"):
        assert (html / f"{page}.html").exists(), page
    assert (html / "generated" / "sccvae.SCCVAE.html").exists()
    assert (html / "generated" / "sccvae.pl.perturbation_modules.html").exists()


def test_readme_set_up_gets_the_code_and_says_which_torch_it_installs():
    readme = (DOCS.parent / "README.md").read_text()
    setup = readme.split("## Set-up")[1].split("## Quick start")[0]
    assert "git clone https://github.com/sccvae/sccvae.git && cd sccvae" in setup
    install = next(line for line in setup.splitlines() if line.startswith("pip install torch"))
    assert "--index-url https://download.pytorch.org/whl/cpu" in install
    assert "CUDA build" in setup and "docs/installation.md" in setup


def test_user_guide_reads_over_fitting_on_the_perturbation_terms(toy_adata):
    """The guide's rule names terms the history has, and not the total validation loss."""
    import sccvae

    guide = " ".join((DOCS / "user_guide.md").read_text().split())
    assert "the total validation loss is *not* a test of over-fitting" in guide
    assert "rises while the training loss falls means over-fitting" not in guide
    sccvae.SCCVAE.setup_anndata(toy_adata)
    model = sccvae.SCCVAE(toy_adata, n_latent=8, n_hidden=16)
    model.train(max_epochs=1, enable_progress_bar=False)
    for term in ("mean_error", "perturbed_reconstruction"):  # what the rule reads
        assert f"{term}_validation" in model.history and f"{term}_train" in model.history
        assert f"`{term}_validation` and" in guide or f"`{term}_validation` against" in guide
