"""CIFAR-10 / CIFAR-100 in the python format, read directly (docs/science.md sections 4 and 6).

Size: one module of about 320 lines on purpose: one file format: its reader, its validation and the
writer of the tiny archives the tests use.

``torchvision.datasets.CIFAR10`` checks the MD5 of every file, so the small archives the
tests and the quick mode make could not pass through it; this reader takes the format as it
is: ``cifar-10-batches-py/`` with ``data_batch_1..5``, ``test_batch``, ``batches.meta`` (or
``cifar-100-python/`` with ``train``, ``test``, ``meta``), each a pickled dict whose
``b'data'`` is an (N, 3072) uint8 array of R, G, B planes. It reads the extracted folder or
the ``.tar.gz`` archive in place, and every pickle goes through :mod:`dmat_core.common.safe_pickle`.

Images come back as uint8 (N, 32, 32, 3), NHWC, RGB; labels as int64 (N,).
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..common.checkpoint import atomic_open, atomic_write_bytes
from ..common.safe_pickle import safe_load_pickle

__all__ = ["CIFAR", "default_root", "load_cifar", "cifar_class_names", "split_validation",
           "write_tiny_cifar", "load_training_set"]

PathLike = Union[str, os.PathLike]

#: name -> (folder, archive, train files, test files, meta file, label key, names key, classes)
CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    meta="batches.meta", label_key="labels", names_key="label_names",
                    num_classes=10),
    "cifar100": dict(folder="cifar-100-python", archive="cifar-100-python.tar.gz",
                     train=["train"], test=["test"], meta="meta", label_key="fine_labels",
                     names_key="fine_label_names", num_classes=100),
}


def default_root() -> Path:
    """Where datasets live: ``$DMAT_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("DMAT_DATA", "data"))


def _spec(name: str) -> dict:
    if name not in CIFAR:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(CIFAR)}")
    return CIFAR[name]


def _locate(root: Path, spec: dict) -> Optional[Path]:
    """The extracted folder or the archive under ``root`` (or ``root`` itself), else None."""
    if (root / spec["folder"]).is_dir():
        return root / spec["folder"]
    if (root / spec["archive"]).is_file():
        return root / spec["archive"]
    if root.is_file() and root.name.endswith((".tar.gz", ".tgz", ".tar")):
        return root
    if root.is_dir() and (root.name == spec["folder"] or (root / spec["meta"]).is_file()):
        return root
    return None


_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


class _Source:
    """Reads members by name from a folder or from a tar archive (nothing is extracted)."""

    def __init__(self, path: Path, spec: dict):
        self.path, self.spec, self.tar = path, spec, None
        if path.is_file():
            try:
                self.tar = tarfile.open(path, "r:*")
            except (tarfile.TarError, OSError) as e:
                reason = " ".join(str(e).split())
                raise ValueError(f"{path}: not a readable tar archive ({reason})") from e

    def where(self, member: str) -> str:
        if self.tar is None:
            return str(self.path / member)
        return f"{self.path}:{self.spec['folder']}/{member}"

    def load(self, member: str) -> dict:
        """The pickled dict ``member``, keys decoded to ``str``; ValueError if missing/bad."""
        where = self.where(member)
        try:
            if self.tar is None:
                f = open(self.path / member, "rb")
            else:
                f = self.tar.extractfile(f"{self.spec['folder']}/{member}")
                if f is None:  # a directory entry
                    raise KeyError(member)
        except (FileNotFoundError, KeyError):
            raise ValueError(f"{where}: missing file (expected {member} in the "
                             f"{self.spec['folder']} format)") from None
        except _READ_ERRORS as e:
            raise ValueError(f"{self.path}: corrupt archive ({type(e).__name__}: {e})") from e
        try:
            with f:
                obj = safe_load_pickle(f, encoding="bytes")
        except (pickle.UnpicklingError, ValueError, *_READ_ERRORS) as e:
            raise ValueError(f"{where}: not a valid CIFAR pickle ({type(e).__name__}: {e})") from e
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
        return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()


def _read_batch(source: _Source, member: str, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    where = source.where(member)
    d = source.load(member)
    for key in ("data", spec["label_key"]):
        if key not in d:
            raise ValueError(f"{where}: missing key {key!r} (found {sorted(d)})")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{where}: 'data' must be a uint8 numpy array, got {kind}")
    if data.size % 3072:
        raise ValueError(f"{where}: 'data' has {data.size} values, not a multiple of "
                         "3072 = 3 x 32 x 32 (truncated or not CIFAR)")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # planes R,G,B -> NHWC
    raw = np.asarray(d[spec["label_key"]])
    if raw.size and raw.dtype.kind not in "iu":
        raise ValueError(f"{where}: labels must be integers, got dtype {raw.dtype}")
    labels = raw.astype(np.int64).reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"{where}: {len(images)} images but {len(labels)} labels")
    k = spec["num_classes"]
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"{where}: labels out of range [0, {k}): "
                         f"min {labels.min()}, max {labels.max()}")
    return images, labels


def load_cifar(root: Optional[PathLike] = None, name: str = "cifar10", train: bool = True,
               download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10 or CIFAR-100 (fine labels) from the python-format folder or archive.

    Args:
        root: directory holding ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``
            (or either of those paths itself); default ``$DMAT_DATA`` else ``./data``.
        name: ``'cifar10'`` or ``'cifar100'``.
        train: the 50k training images (all training batches, in order) or the 10k test set.
        download: fetch the archive with torchvision if nothing is found under ``root``.

    Returns:
        ``(images, labels)``: uint8 (N, 32, 32, 3) NHWC RGB and int64 (N,).

    Raises:
        FileNotFoundError: nothing found under ``root`` (and no download).
        ValueError: a file is missing, truncated or malformed; the message names it.
    """
    spec = _spec(name)
    root = Path(root) if root is not None else default_root()
    found = _locate(root, spec)
    if found is None and download:
        _download(root, name)
        found = _locate(root, spec)
    if found is None:
        raise FileNotFoundError(
            f"{name} not found under {root.resolve()}: put {spec['archive']} (or the extracted "
            f"{spec['folder']}/ folder) there, set DMAT_DATA to its directory, or pass "
            "download=True on a machine with internet access.")
    source = _Source(found, spec)
    try:
        parts = [_read_batch(source, m, spec) for m in spec["train" if train else "test"]]
    finally:
        source.close()
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    return images, np.concatenate([p[1] for p in parts])


def cifar_class_names(root: Optional[PathLike] = None, name: str = "cifar10") -> list[str]:
    """Class names from ``batches.meta`` (CIFAR-10) or ``meta`` (CIFAR-100, fine labels)."""
    spec = _spec(name)
    root = Path(root) if root is not None else default_root()
    found = _locate(root, spec)
    if found is None:
        raise FileNotFoundError(f"{name} not found under {root.resolve()}")
    source = _Source(found, spec)
    try:
        meta = source.load(spec["meta"])
    finally:
        source.close()
    if spec["names_key"] not in meta:
        raise ValueError(f"{found}:{spec['meta']}: missing key {spec['names_key']!r}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[spec["names_key"]]]


def _download(root: Path, name: str) -> None:
    """Fetch the archive with torchvision (its MD5 check applies to the real files)."""
    import torchvision
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    spec = _spec(name)
    try:
        cls(str(root), train=True, download=True)
    except Exception as e:  # URLError, socket errors, ... : no network
        raise RuntimeError(
            f"could not download {name} ({type(e).__name__}: {e}). Without internet, copy "
            f"{spec['archive']} (from https://www.cs.toronto.edu/~kriz/) or the extracted "
            f"{spec['folder']}/ into {root.resolve()}, or set DMAT_DATA to where it is.") from e


def split_validation(images: np.ndarray, labels: np.ndarray, n_val: int = 1024):
    """Hold out the first ``n_val`` training images for validation (docs/science.md section 4).

    Returns:
        ``(train_images, train_labels), (val_images, val_labels)`` (views, no copy).
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if not 0 <= n_val < len(images):
        raise ValueError(f"n_val={n_val} must be in [0, {len(images)})")
    return (images[n_val:], labels[n_val:]), (images[:n_val], labels[:n_val])


# --------------------------------------------------------------------------- tiny archives

def _tiny_images(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Class-dependent images: a jittered class colour, stripes at a class angle, noise."""
    cls_rng = np.random.default_rng(12345)  # same classes for every seed and split
    colours = cls_rng.uniform(50, 205, size=(num_classes, 3))
    angles = np.pi * np.arange(num_classes) / num_classes
    freq = 2 * np.pi / cls_rng.uniform(6, 12, size=num_classes)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)
    n = len(labels)
    a, f = angles[labels][:, None, None], freq[labels][:, None, None]
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    stripes = np.sin(f * (xx * np.cos(a) + yy * np.sin(a)) + phase)  # (N, 32, 32)
    colour = colours[labels] + rng.normal(0, 20, size=(n, 3))  # (N, 3) per-image jitter
    img = colour[:, None, None, :] + 45 * stripes[..., None]
    img += rng.normal(0, 12, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)  # (N, 32, 32, 3)


def _batch_pickle(images: np.ndarray, labels: np.ndarray, label_key: str, title: str,
                  extra: Optional[dict] = None) -> bytes:
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), 3072)
    d = {b"batch_label": title.encode(), label_key.encode(): [int(v) for v in labels],
         b"data": data, b"filenames": [f"tiny_{i:06d}.png".encode() for i in range(len(labels))]}
    d.update(extra or {})
    return pickle.dumps(d, protocol=2)


def write_tiny_cifar(root: PathLike, n_train_per_batch: int = 100, n_test: int = 100,
                     num_classes: Optional[int] = None, seed: int = 0, name: str = "cifar10",
                     as_tar: bool = False) -> Path:
    """Write a small synthetic dataset in the real CIFAR python format (tests, quick mode).

    Images are class-dependent (colour + oriented stripes + noise) so a small classifier
    learns them. CIFAR-10 gets 5 training batches of ``n_train_per_batch`` images; CIFAR-100
    gets one ``train`` file of ``n_train_per_batch`` images.

    Args:
        root: directory to write into (created).
        num_classes: labels drawn from ``range(num_classes)``; default 10 or 100 by ``name``.
        as_tar: write ``cifar-10-python.tar.gz`` instead of the extracted folder.

    Returns:
        The folder or archive written (``load_cifar(root)`` finds it).
    """
    spec = _spec(name)
    k = num_classes or spec["num_classes"]
    if not 1 <= k <= spec["num_classes"]:
        raise ValueError(f"num_classes={k} must be in [1, {spec['num_classes']}] for {name}")
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    lk = spec["label_key"]
    for member in spec["train"] + spec["test"]:
        n = n_test if member in spec["test"] else n_train_per_batch
        labels = rng.integers(0, k, size=n)
        extra = {b"coarse_labels": [int(v) % 20 for v in labels]} if name == "cifar100" else None
        files[member] = _batch_pickle(_tiny_images(labels, k, rng), labels, lk,
                                      f"tiny {member}", extra)
    names = [f"class_{i}".encode() for i in range(spec["num_classes"])]
    meta = {spec["names_key"].encode(): names}
    if name == "cifar100":
        meta[b"coarse_label_names"] = [f"superclass_{i}".encode() for i in range(20)]
    else:
        meta[b"num_cases_per_batch"], meta[b"num_vis"] = n_train_per_batch, 3072
    files[spec["meta"]] = pickle.dumps(meta, protocol=2)
    root = Path(root)
    if as_tar:
        out = root / spec["archive"]
        with atomic_open(out, "wb") as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
            for member, blob in files.items():
                info = tarfile.TarInfo(f"{spec['folder']}/{member}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        return out
    out = root / spec["folder"]
    for member, blob in files.items():
        atomic_write_bytes(out / member, blob)
    return out


def load_training_set(data_dir: Optional[PathLike] = None, name: str = "cifar10",
                      make_tiny: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The training images and labels of `name` under `data_dir` (default: `$DMAT_DATA`); with
    `make_tiny`, a missing archive is replaced by :func:`write_tiny_cifar`'s synthetic one
    (deterministic and written atomically, so every DDP rank may call this)."""
    root = Path(data_dir) if data_dir else default_root()
    try:
        return load_cifar(root, name, train=True)
    except FileNotFoundError:
        if not make_tiny:
            raise
        write_tiny_cifar(root, name=name)
        return load_cifar(root, name, train=True)
