from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import sccvae
from sccvae.cli import main
from sccvae.data import simulate_perturbseq

from .conftest import PERTURBENCH_DEVEL, PERTURBENCH_DEVEL_MISSING

TINY = dict(n_genes=100, n_perturbations=10, n_cells_per_perturbation=30, n_control_cells=200)
FAST = ["--max-epochs", "1", "--n-cells", "30", "--n-latent", "16", "--n-hidden", "32", "--quiet"]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.h5ad"
    simulate_perturbseq(**TINY, seed=0).write_h5ad(path)
    return path


@pytest.fixture
def no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training started although the input is invalid")

    monkeypatch.setattr(sccvae.SCCVAE, "train", fail)


def test_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["benchmark", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--data",
        "--perturbation-key",
        "--control-label",
        "--split",
        "--folds",
        "--max-epochs",
        "--methods",
        "--seed",
        "--out",
        "--n-cells",
        "--quiet",
        "--dataset",
        "--likelihood",
        "--obs-filter",
        "--n-seeds",
        "--embedding",
    ):
        assert option in text
    flat = " ".join(text.split())
    assert "grna_max_frac >= 0.8" in flat and "leave-one-out" in flat and "raw counts" in flat


def test_help_as_module():
    proc = subprocess.run(
        [sys.executable, "-m", "sccvae.cli", "benchmark", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "--split" in proc.stdout


def test_no_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_writes_outputs(tiny_file, tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["benchmark", "--data", str(tiny_file), "--folds", "2", "--out", str(out), *FAST])
    assert code == 0
    for name in ("results.csv", "summary.csv", "summary.md", "splits.json", "metrics.png"):
        assert (out / name).is_file(), name
    assert list(out.glob("*.png"))
    results = pd.read_csv(out / "results.csv")
    assert set(results["method"]) == {
        "sccvae", "control", "mean", "mean_target", "multireg", "linear", "coexpression", "knn"
    }  # fmt: skip
    assert results["perturbation"].nunique() == 10
    splits = json.loads((out / "splits.json").read_text())
    assert len(splits) == 2 and {"train_idx", "test_idx"} <= set(splits[0])
    md = (out / "summary.md").read_text()
    assert "sccvae benchmark --data" in md
    assert "torch" in md and "cpu_count" in md and "wall time" in md
    assert "| pearson_delta_all" in md
    assert md.rstrip().splitlines()[-1].startswith("- de_overlap")  # ends with the verdicts
    assert "## Verdict" in md and "beat every baseline" in md
    printed = capsys.readouterr().out
    assert "pearson_delta_all" in printed and "win" in printed
    assert "verdict" in printed.lower() and "of perturbations" in printed


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--methods", "sccvae,gears"], "Unknown method"),
        (["--perturbation-key", "condition"], "not found in adata.obs"),
        (["--control-label", "ctrl"], "No control cells"),
        (["--folds", "1"], "n_folds"),
        (["--likelihood", "nb"], "needs raw counts in X"),
        (["--obs-filter", "nope > 1"], "'nope'"),
        (["--split", "combo"], "No combination"),
    ],
)
def test_bad_input_exit_2(tiny_file, no_training, capsys, args, match):
    with pytest.raises(SystemExit) as info:
        main(["benchmark", "--data", str(tiny_file), *FAST, *args])
    assert info.value.code == 2
    assert match in capsys.readouterr().err


def test_missing_file_exit_2(no_training, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["benchmark", "--data", str(tmp_path / "nope.h5ad"), *FAST])
    assert info.value.code == 2
    assert "not found" in capsys.readouterr().err


def test_bad_split_choice_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["benchmark", "--split", "iid"])
    assert info.value.code == 2


def test_counts_file_with_filter_and_likelihood(tmp_path, capsys):
    adata = simulate_perturbseq(**TINY, seed=0)
    adata.X = adata.layers.pop("counts")
    adata.obs["quality"] = np.linspace(0, 1, adata.n_obs)
    path = tmp_path / "counts.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "bench"
    argv = ["benchmark", "--data", str(path), "--folds", "2", "--methods", "mean,control"]
    argv += ["--obs-filter", "quality >= 0.1", "--likelihood", "nb", "--out", str(out), *FAST]
    assert main(argv) == 0
    md = (out / "summary.md").read_text()
    assert "- likelihood: nb" in md and "- obs_filter: quality >= 0.1" in md
    assert "normalize_total(target_sum=1e4) + log1p" in md


def test_n_seeds_flag(monkeypatch, capsys):
    from sccvae.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["benchmark"]).n_seeds == 1
    assert parser.parse_args(["benchmark", "--n-seeds", "3"]).n_seeds == 3
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(["benchmark", "--n-seeds", bad])
        assert info.value.code == 2
        assert "--n-seeds" in capsys.readouterr().err
    # the flag reaches run_benchmark
    seen = {}

    def stop(**kwargs):
        seen.update(kwargs)
        raise sccvae.benchmark.BenchmarkInputError("stop here")

    monkeypatch.setattr(sccvae.benchmark, "run_benchmark", stop)
    with pytest.raises(SystemExit):
        main(["benchmark", "--n-seeds", "2", *FAST])
    assert seen["n_seeds"] == 2


def _embedding_frame(genes, n: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(rng.normal(size=(len(genes), n)), index=list(genes))


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".h5ad"])
def test_embedding_files_are_read_as_genes_by_dimensions(tmp_path, suffix):
    import anndata as ad

    from sccvae.benchmark import load_embedding

    frame = _embedding_frame(["A", "B", "C"])
    frame.columns = [f"d{i}" for i in range(frame.shape[1])]
    path = tmp_path / f"embedding{suffix}"
    if suffix == ".csv":
        frame.to_csv(path)
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t")
    elif suffix == ".parquet":
        frame.to_parquet(path)
    else:
        ad.AnnData(frame.to_numpy(np.float32), obs=pd.DataFrame(index=frame.index)).write_h5ad(
            path
        )
    read = load_embedding(path)
    assert list(read.index) == ["A", "B", "C"] and read.shape == (3, 4)
    np.testing.assert_allclose(read.to_numpy(), frame.to_numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    ("content", "name", "match"),
    [
        ("gene,d0\nA,1\nA,2\n", "e.csv", "more than once"),
        ("gene,d0,label\nA,1,x\nB,2,y\n", "e.csv", "non-numeric columns ['label']"),
        ("gene,d0\nA,1\nB,\n", "e.csv", "NaN"),
        ("A 1\n", "e.txt", "use a file ending in"),
    ],
)
def test_bad_embedding_file_exit_2(tiny_file, no_training, tmp_path, capsys, content, name, match):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(SystemExit) as info:
        main(["benchmark", "--data", str(tiny_file), "--embedding", str(path), *FAST])
    assert info.value.code == 2
    assert match in capsys.readouterr().err


@pytest.mark.skipif(not PERTURBENCH_DEVEL.exists(), reason=PERTURBENCH_DEVEL_MISSING)
def test_norman_unseen_split_with_an_embedding_file(tmp_path, capsys):
    import anndata as ad

    from sccvae._embedding import coexpression_embedding

    full = ad.read_h5ad(PERTURBENCH_DEVEL)
    norman = full[full.obs["dataset"] == "norman19"]
    labels = norman.obs["condition"].astype(str)
    targets = sorted({t for label in set(labels) - {"control"} for t in label.split("+")})
    # an embedding as a user might bring: the measured genes by their coexpression, the
    # unmeasured targets (30 of 31) by vectors of their own
    measured = coexpression_embedding(
        norman[labels == "control"].X, norman.var_names, n_components=8
    )
    others = _embedding_frame([t for t in targets if t not in measured.index], n=8)
    others.columns = measured.columns
    path = tmp_path / "norman_embedding.csv"
    pd.concat([measured, others]).to_csv(path)
    data = ["--data", str(PERTURBENCH_DEVEL), "--perturbation-key", "condition"]
    data += ["--dataset", "norman19", "--split", "unseen", "--folds", "2"]
    # without it, the default methods cannot test the unmeasured targets, and the error says
    # how to give them one
    with pytest.raises(SystemExit) as info:
        main(["benchmark", *data, *FAST])
    assert info.value.code == 2 and "--embedding PATH" in capsys.readouterr().err
    out = tmp_path / "bench"
    assert main(["benchmark", *data, "--embedding", str(path), "--out", str(out), *FAST]) == 0
    results = pd.read_csv(out / "results.csv")
    assert "sccvae" in set(results["method"])
    assert {"linear", "knn", "mean"} <= set(results["method"])
    assert "coexpression" not in set(results["method"])  # measured targets only: left out
    assert results["perturbation"].nunique() == labels[labels != "control"].nunique()
    summary = pd.read_csv(out / "summary.csv")
    assert "sccvae" in set(summary["method"])
    printed = " ".join(capsys.readouterr().out.split())
    assert "Left out of the default methods: coexpression" in printed
