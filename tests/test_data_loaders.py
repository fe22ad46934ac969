from __future__ import annotations

import io
import shutil
from pathlib import Path
from urllib.error import URLError

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import sccvae.data as scd
from sccvae.data import _download

from .conftest import PERTURBENCH_DEVEL, PERTURBENCH_DEVEL_MISSING



def _check_conventions(adata: ad.AnnData) -> None:
    assert "perturbation" in adata.obs
    labels = adata.obs["perturbation"].astype(str)
    assert (labels == "control").any()
    for label in labels.unique():
        parts = label.split("+")
        assert parts == sorted(parts)
    counts = adata.layers["counts"]
    assert sp.isspmatrix_csr(counts) or isinstance(counts, sp.csr_array)
    assert counts.dtype == np.float32
    np.testing.assert_array_equal(counts.data, np.round(counts.data))
    assert sp.issparse(adata.X) and adata.X.format == "csr" and adata.X.dtype == np.float32
    expected = scd.log_normalize_counts(counts)
    assert abs(adata.X - expected).max() < 1e-5
    assert adata.var_names.is_unique


def make_replogle_raw(path: Path, seed: int = 0) -> ad.AnnData:
    """A tiny file in the layout of K562_essential_raw_singlecell_01.h5ad (dense raw counts)."""
    rng = np.random.default_rng(seed)
    n_genes = 30
    genes = ["non-targeting"] * 40 + ["GENE1"] * 20 + ["GENE2"] * 20 + ["GENE5"] * 10
    n = len(genes)
    x = rng.poisson(3.0, (n, n_genes)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "gem_group": rng.integers(1, 5, n),
            "gene": pd.Categorical(genes),
            "gene_id": pd.Categorical([g if g == "non-targeting" else "ENSG" + g for g in genes]),
            "transcript": pd.Categorical(["P1P2"] * n),
            "gene_transcript": pd.Categorical([f"{i}_{g}_P1P2_ENSG" for i, g in enumerate(genes)]),
            "sgID_AB": pd.Categorical([f"{g}_sg" for g in genes]),
            "mitopercent": rng.random(n).astype(np.float32),
            "UMI_count": x.sum(1),
        },
        index=[f"AAAC{i}-1" for i in range(n)],
    )
    symbols = [f"GENE{i}" for i in range(n_genes)]
    symbols[7] = "GENE6"  # a duplicated symbol, as happens in real annotations
    var = pd.DataFrame(
        {"gene_name": pd.Categorical(symbols), "chr": "chr1", "mean": x.mean(0)},
        index=[f"ENSG{i:011d}" for i in range(n_genes)],
    )
    raw = ad.AnnData(X=x, obs=obs, var=var)
    raw.write_h5ad(path)
    return raw


def make_norman_raw(path: Path, seed: int = 0) -> ad.AnnData:
    """A tiny file in the scPerturb layout (sparse raw counts, '_' joined doubles)."""
    rng = np.random.default_rng(seed)
    labels = (
        ["control"] * 30
        + ["KLF1"] * 10
        + ["KLF1_CEBPA"] * 8
        + ["CEBPA_KLF1"] * 4
        + ["ctrl"] * 5
        + ["SET_ctrl"] * 6
    )
    n = len(labels)
    x = sp.csr_matrix(rng.poisson(2.0, (n, 25)).astype(np.float32))
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(labels),
            "nperts": [len(lab.split("_")) for lab in labels],
            "celltype": "K562",
        },
        index=[f"cell{i}" for i in range(n)],
    )
    var = pd.DataFrame(
        {"ensembl_id": [f"ENSG{i}" for i in range(25)]}, index=[f"SYM{i}" for i in range(25)]
    )
    raw = ad.AnnData(X=x, obs=obs, var=var)
    raw.write_h5ad(path)
    return raw


def test_replogle_from_local_path(tmp_path):
    file = tmp_path / "K562_essential_raw_singlecell_01.h5ad"
    raw = make_replogle_raw(file)
    adata = scd.replogle2022_k562_essential(path=file)
    _check_conventions(adata)
    assert adata.shape == raw.shape
    labels = adata.obs["perturbation"].astype(str)
    assert (labels == "control").sum() == 40
    assert set(labels) == {"control", "GENE1", "GENE2", "GENE5"}
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), raw.X)
    assert adata.var_names[0] == "GENE0" and "gene_id" in adata.var
    assert adata.var["gene_id"].iloc[0] == raw.var_names[0]
    assert "gene_transcript" in adata.obs and "UMI_count" in adata.obs


def test_norman_from_local_path(tmp_path):
    file = tmp_path / "NormanWeissman2019_filtered.h5ad"
    raw = make_norman_raw(file)
    adata = scd.norman2019(path=file)
    _check_conventions(adata)
    counts = adata.obs["perturbation"].astype(str).value_counts()
    assert counts["control"] == 35
    assert counts["CEBPA+KLF1"] == 12
    assert counts["KLF1"] == 10 and counts["SET"] == 6
    assert adata.obs["perturbation_raw"].iloc[-1] == "SET_ctrl"
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), raw.X.toarray())
    assert list(adata.var_names) == list(raw.var_names)


def test_standardize_labels():
    labels = [
        "control",
        "CTRL",
        "non-targeting",
        "",
        "B_A",
        "A+B",
        "A|B",
        "ctrl+KLF1",
        "KLF1_ctrl",
        " KLF1 ",
    ]
    out = scd.standardize_perturbation_labels(labels)
    assert list(out) == ["control"] * 4 + ["A+B"] * 3 + ["KLF1"] * 3
    # without '_' as a delimiter, names with underscores survive
    assert scd.standardize_perturbation_labels(["HLA_A"], delimiters=("+",))[0] == "HLA_A"
    with pytest.raises(ValueError, match="missing"):
        scd.standardize_perturbation_labels(["A", None])


def test_missing_local_path_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="path="):
        scd.norman2019(path=tmp_path / "nope.h5ad")


def test_unreachable_url_gives_clear_error(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(_download, "urlopen", fail)
    with pytest.raises(scd.DatasetDownloadError) as info:
        scd.norman2019(cache_dir=tmp_path)
    message = str(info.value)
    assert scd.DATASETS["norman2019"].url in message
    assert "path=" in message
    assert isinstance(info.value, OSError)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


class _FakeResponse(io.BytesIO):
    headers: dict = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_checksum_mismatch_raises_and_removes_file(tmp_path, monkeypatch):
    monkeypatch.setattr(_download, "urlopen", lambda *a, **k: _FakeResponse(b"not the real file"))
    with pytest.raises(scd.ChecksumMismatchError, match="md5"):
        scd.download_dataset("norman2019", cache_dir=tmp_path)
    assert not (tmp_path / scd.DATASETS["norman2019"].filename).exists()


def test_trust_on_first_use_checksum(tmp_path, monkeypatch):
    """Without a known checksum the first download's SHA-256 is recorded and enforced."""
    monkeypatch.setattr(_download, "urlopen", lambda *a, **k: _FakeResponse(b"payload v1"))
    path = scd.download_dataset("replogle2022_k562_essential", cache_dir=tmp_path)
    sidecar = path.with_name(path.name + ".sha256")
    assert sidecar.read_text().split()[0] == _download.file_digests(path)["sha256"]
    assert scd.download_dataset("replogle2022_k562_essential", cache_dir=tmp_path) == path
    path.write_bytes(b"tampered")
    with pytest.raises(scd.ChecksumMismatchError, match="force_download=True"):
        scd.download_dataset("replogle2022_k562_essential", cache_dir=tmp_path)
    # force_download fetches a fresh copy and records its checksum
    assert (
        scd.download_dataset(
            "replogle2022_k562_essential", cache_dir=tmp_path, force_download=True
        )
        == path
    )
    assert path.read_bytes() == b"payload v1"


def test_download_streams_to_final_name(tmp_path, monkeypatch):
    payload = bytes(range(256)) * 5000
    monkeypatch.setattr(_download, "urlopen", lambda *a, **k: _FakeResponse(payload))
    target = tmp_path / "sub" / "file.bin"
    _download._download_url("https://example.invalid/file.bin", target, chunk_size=1000)
    assert target.read_bytes() == payload
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_cache_is_reused(tmp_path, monkeypatch):
    source = tmp_path / "source.h5ad"
    make_replogle_raw(source)
    calls = []

    def fake_download(url, destination, **kwargs):
        calls.append(url)
        shutil.copyfile(source, destination)

    monkeypatch.setattr(_download, "_download_url", fake_download)
    cache = tmp_path / "cache"
    first = scd.replogle2022_k562_essential(cache_dir=cache)
    second = scd.replogle2022_k562_essential(cache_dir=cache)
    assert calls == [scd.DATASETS["replogle2022_k562_essential"].url]
    assert (first.X != second.X).nnz == 0
    assert (cache / "K562_essential_raw_singlecell_01.h5ad.sha256").exists()


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("SCCVAE_CACHE_DIR", str(tmp_path / "env"))
    assert scd.get_cache_dir() == tmp_path / "env"
    assert scd.get_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("SCCVAE_CACHE_DIR")
    assert "sccvae" in str(scd.get_cache_dir())


def test_unknown_dataset():
    with pytest.raises(ValueError, match="Unknown dataset"):
        scd.download_dataset("nope")


def test_recover_counts_roundtrip():
    rng = np.random.default_rng(0)
    counts = rng.poisson(1.5, (50, 40)).astype(np.float32)
    counts[:, 0] = 1  # every cell has a gene with one UMI
    counts[3] = 0  # an empty cell
    log = scd.log_normalize_counts(counts)
    recovered, off = scd.recover_counts(log)
    np.testing.assert_array_equal(recovered.toarray(), counts)
    assert off == 0.0


@pytest.mark.skipif(
    not PERTURBENCH_DEVEL.exists(), reason=PERTURBENCH_DEVEL_MISSING
)
def test_perturbench_devel():
    adata = scd.perturbench_devel(PERTURBENCH_DEVEL, dataset="norman19")
    assert adata.n_obs == 3375 and adata.n_vars == 500
    labels = adata.obs["perturbation"].astype(str)
    assert (labels == "control").sum() == 100
    assert "KLF1+MAP2K6" in set(labels)
    assert adata.uns["counts_recovery_fraction_off"] < 0.001
    counts = adata.layers["counts"]
    assert counts.dtype == np.float32 and counts.format == "csr"
    np.testing.assert_array_equal(counts.data, np.round(counts.data))
    assert adata.X.dtype == np.float32 and adata.X.format == "csr"
    # default X is the file's values (normalised by the full-transcriptome total)
    raw = ad.read_h5ad(PERTURBENCH_DEVEL)
    raw = raw[raw.obs["dataset"] == "norman19"]
    assert abs(adata.X - raw.X.astype(np.float32)).max() < 1e-5
    # the recovered counts reproduce X up to each cell's library-size factor
    renorm = scd.perturbench_devel(PERTURBENCH_DEVEL, dataset="norman19", renormalize=True)
    _check_conventions(renorm)
    other = scd.perturbench_devel(PERTURBENCH_DEVEL, dataset="mcfaline23")
    assert (other.obs["perturbation"].astype(str) == "control").sum() == 300
    with pytest.raises(ValueError, match="available"):
        scd.perturbench_devel(PERTURBENCH_DEVEL, dataset="nope")
