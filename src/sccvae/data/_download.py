"""Download-on-first-use with a local cache and checksum verification.

Nothing is downloaded at import time. Files are streamed to a temporary file in the cache
directory and atomically renamed, so an interrupted download never leaves a truncated file
under the final name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.request import Request, urlopen

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "SCCVAE_CACHE_DIR"


class DatasetDownloadError(OSError):
    """A dataset could not be downloaded (no network, server error, ...)."""


class ChecksumMismatchError(DatasetDownloadError):
    """A downloaded or cached file does not have the expected checksum."""


@dataclass(frozen=True)
class RemoteFile:
    """A downloadable file of the dataset registry.

    Attributes
    ----------
    url
        Where the file is downloaded from.
    filename
        Name of the file in the cache directory.
    md5, sha256
        Expected checksums (hex), or ``None`` when not known in advance. Without a known
        checksum the SHA-256 of the first download is recorded in ``<filename>.sha256`` and
        later uses of the cached file are verified against it (trust on first use).
    description
        One line about the file.
    """

    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None
    description: str = ""


#: Registry of the public datasets :mod:`sccvae.data` can download.
DATASETS: dict[str, RemoteFile] = {
    "replogle2022_k562_essential": RemoteFile(
        url="https://plus.figshare.com/ndownloader/files/35773219",
        filename="K562_essential_raw_singlecell_01.h5ad",
        # checksum not known to us: recorded on first download (see RemoteFile)
        description=(
            "Replogle et al. 2022, K562 essential-gene CRISPRi Perturb-seq, raw single-cell "
            "UMI counts (figshare, ~10 GB)."
        ),
    ),
    "norman2019": RemoteFile(
        url="https://zenodo.org/records/13350497/files/NormanWeissman2019_filtered.h5ad",
        filename="NormanWeissman2019_filtered.h5ad",
        # md5 of the scPerturb file as reported independently by two public projects
        # (gao-lab/CASCADE data/download/Norman-2019/README.md and an scPerturb benchmark card);
        # not re-computed by the sccvae authors.
        md5="c870e6967d91c017d9da827bab183cd6",
        description=(
            "Norman et al. 2019, K562 CRISPRa single and double perturbations, scPerturb "
            "harmonised h5ad with raw counts (zenodo)."
        ),
    ),
}


def get_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the directory downloads are cached in (created if missing).

    Resolution order: the ``cache_dir`` argument, the ``SCCVAE_CACHE_DIR`` environment
    variable, then ``platformdirs.user_cache_dir("sccvae")``.
    """
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV_VAR) or None
    if cache_dir is None:
        import platformdirs

        cache_dir = platformdirs.user_cache_dir("sccvae")
    path = Path(cache_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_digests(path: str | os.PathLike, chunk_size: int = 1 << 22) -> dict[str, str]:
    """MD5 and SHA-256 (hex) of a file, computed in one streaming pass."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            md5.update(chunk)
            sha.update(chunk)
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def _download_url(
    url: str, destination: Path, timeout: float = 60.0, chunk_size: int = 1 << 20
) -> None:
    """Stream ``url`` into ``destination`` through a temporary file and an atomic rename."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=destination.name + ".", suffix=".part", dir=destination.parent
    )
    tmp = Path(tmp_name)
    try:
        request = Request(url, headers={"User-Agent": "sccvae-data-loader"})
        with os.fdopen(fd, "wb") as out, urlopen(request, timeout=timeout) as response:
            total = (
                response.headers.get("Content-Length")
                if getattr(response, "headers", None)
                else None
            )
            done, next_report = 0, 0
            while chunk := response.read(chunk_size):
                out.write(chunk)
                done += len(chunk)
                if done >= next_report:
                    logger.info(
                        "Downloading %s: %.0f MB%s",
                        destination.name,
                        done / 1e6,
                        f" of {int(total) / 1e6:.0f} MB" if total else "",
                    )
                    next_report += 200 * (1 << 20)
        os.replace(tmp, destination)
    finally:
        if tmp.exists():
            tmp.unlink()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _verify(path: Path, entry: RemoteFile, name: str, first_download: bool) -> None:
    """Check ``path`` against the registry checksum, or against / into the sidecar file."""
    digests = file_digests(path)
    expected = {k: v for k, v in (("md5", entry.md5), ("sha256", entry.sha256)) if v}
    sidecar = _sidecar(path)
    if not expected and sidecar.exists():
        recorded = sidecar.read_text().split()
        if recorded:
            expected = {"sha256": recorded[0]}
    for kind, value in expected.items():
        if digests[kind].lower() != value.lower():
            where = "downloaded" if first_download else "cached"
            if first_download:
                path.unlink(missing_ok=True)
            raise ChecksumMismatchError(
                f"The {where} file for dataset {name!r} ({path}) has {kind} {digests[kind]}, "
                f"expected "
                f"{value}. "
                + (
                    "The corrupt download was removed; try again."
                    if first_download
                    else f"Delete {path} (and {sidecar.name} if present) or call again with "
                    "`force_download=True` to download it afresh."
                )
                + f" If the upstream file changed on purpose, download {entry.url} yourself and "
                "pass it as `path=`."
            )
    if not sidecar.exists():
        sidecar.write_text(f"{digests['sha256']}  {path.name}\n")
        if not entry.md5 and not entry.sha256:
            logger.info(
                "No published checksum for %s: recorded SHA-256 %s in %s; "
                "later uses are verified against it.",
                path.name,
                digests["sha256"],
                sidecar,
            )


def download_dataset(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    verify: bool = True,
) -> Path:
    """Path of a registry dataset in the cache, downloading it on first use.

    Parameters
    ----------
    name
        A key of :data:`DATASETS`.
    cache_dir
        Cache directory (see :func:`get_cache_dir`).
    force_download
        Download again even when a cached copy exists.
    verify
        Check the file's checksum: against the registry value when known, otherwise against
        the SHA-256 recorded in ``<file>.sha256`` on first download (trust on first use).

    Returns
    -------
    Path of the cached file.

    Raises
    ------
    DatasetDownloadError
        The file could not be downloaded (for example, no network access). The message names
        the URL and how to pass a local copy with ``path=``.
    ChecksumMismatchError
        The file does not have the expected checksum.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; known: {sorted(DATASETS)}.")
    entry = DATASETS[name]
    destination = get_cache_dir(cache_dir) / entry.filename
    first = False
    if force_download or not destination.exists():
        if force_download:
            _sidecar(destination).unlink(missing_ok=True)
        logger.info("Downloading dataset %r from %s to %s", name, entry.url, destination)
        try:
            _download_url(entry.url, destination)
        except (URLError, OSError, TimeoutError) as error:
            raise DatasetDownloadError(
                f"Could not download dataset {name!r} from {entry.url} ({error}). Without network "
                f"access, download the file elsewhere and pass it directly, e.g. "
                f"`sccvae.data.{name}(path='/path/to/{entry.filename}')`, "
                f"or place it at {destination}."
            ) from error
        first = True
    else:
        logger.info("Using cached %s", destination)
    if verify:
        _verify(destination, entry, name, first_download=first)
    return destination
