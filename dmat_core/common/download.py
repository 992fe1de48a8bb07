"""Fetch the paper's published files when online: never a half-written file, a clear error when offline.

    path = download(PUBLISHED["cifar10_linf_wrn28-10"], "data/cifar10_linf_wrn28-10.pt")
    wrn, info = load_trained_classifier(path, "wrn-28-10")

The published checkpoint and the 1M generated set of Wang et al. (ICML 2023; docs/science.md
section 4) live on the Hugging Face hub. :func:`download` streams a URL into a temporary file
beside the destination and renames it only once every byte arrived (the length the server
announced, and `size` / `sha256` when given): a kill or a dropped connection leaves the
destination as it was. A file already at the destination is kept (checked against `size` /
`sha256` when given). Offline (as in the test suite and CI) it raises :class:`DownloadError`
naming the URL and the manual step. Notebook 07 uses it in full mode.
"""
from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from .checkpoint import atomic_open

__all__ = ["PUBLISHED", "DownloadError", "download", "file_sha256"]

PUBLISHED = {
    # EMA weights of the WRN-28-10 (SiLU), CIFAR-10 Linf 8/255: 92.44% clean, 67.31% AutoAttack
    "cifar10_linf_wrn28-10": "https://huggingface.co/wzekai99/DM-Improves-AT/resolve/main/checkpoint/"
                             "cifar10_linf_wrn28-10.pt",
    # 1M EDM-generated CIFAR-10 images (uint8 NHWC `image`, `label`), about 3.1 GB
    "cifar10_1m": "https://huggingface.co/datasets/P2333/DM-Improves-AT/resolve/main/cifar10/1m.npz",
}


class DownloadError(ConnectionError):
    """The file could not be fetched (offline, moved, or the transfer broke off)."""


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _check(path: Path, size: Optional[int], sha256: Optional[str], what: str) -> None:
    got = path.stat().st_size
    if size is not None and got != size:
        raise ValueError(f"{what} has {got} bytes, expected {size}")
    if sha256 is not None and file_sha256(path) != sha256.lower():
        raise ValueError(f"{what} does not have the expected SHA-256 {sha256}")


def download(url: str, dest, *, size: Optional[int] = None, sha256: Optional[str] = None,
             progress: bool = True, timeout: float = 60.0, chunk: int = 1 << 20) -> Path:
    """Download `url` to `dest` atomically (temporary file + rename); return `dest` as a Path.

    Args:
        url: http(s) or file:// address.
        dest: the file to write (parent folders are made). Kept if it exists already.
        size, sha256: the expected length in bytes and SHA-256 hex digest, when known; a
            mismatch is a ValueError and leaves nothing at `dest` (an existing `dest` that does
            not match is reported, not deleted).
        progress: a tqdm bar. timeout: seconds to wait for the server.
    Raises:
        DownloadError: no connection, an HTTP error, or a transfer cut short; the message
            names the URL and how to fetch the file by hand.
    """
    dest = Path(dest)
    if dest.is_file():
        _check(dest, size, sha256, f"{dest} (already there; delete it to download again)")
        return dest
    manual = (f"Fetch it on a machine with internet access, e.g. `curl -L -o {dest.name} {url}`, "
              f"and put it at {dest.resolve()}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            announced = response.headers.get("Content-Length") if hasattr(response, "headers") else None
            total = int(announced) if announced and announced.isdigit() else size
            from tqdm.auto import tqdm
            with atomic_open(dest, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                                                  disable=not progress) as bar:
                done, digest = 0, hashlib.sha256()
                for block in iter(lambda: response.read(chunk), b""):
                    f.write(block)
                    digest.update(block)
                    done += len(block)
                    bar.update(len(block))
                if announced and announced.isdigit() and done != int(announced):
                    raise DownloadError(f"the transfer of {url} stopped after {done} of {announced} bytes; "
                                        f"{dest} was not written. Run again, or: {manual}")
                what = f"the file downloaded from {url} ({dest} was not written)"
                if size is not None and done != size:
                    raise ValueError(f"{what} has {done} bytes, expected {size}")
                if sha256 is not None and digest.hexdigest() != sha256.lower():
                    raise ValueError(f"{what} does not have the expected SHA-256 {sha256}")
    except DownloadError:
        raise
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"could not download {url} ({type(e).__name__}: {reason}): offline, or the "
                            f"file moved. {manual}") from None
    return dest
