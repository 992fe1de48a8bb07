"""Generated training data in the paper's ``.npz`` format (docs/science.md section 4).

A generated set is an ``.npz`` with ``image``: uint8 (N, 32, 32, 3), NHWC, RGB, and
``label``: integer (N,), the class each image was conditioned on (other datasets keep the same
layout with their own image shape, e.g. (N, 8, 8, 1) for the grey digits: pass ``shape``). The published sets hold
1M to 50M images (3 GB to 150 GB), so they are memory-mapped rather than read:

- ``np.load(mmap_mode='r')`` silently reads a whole ``.npz`` into memory (a zip member
  cannot be mapped by numpy). An uncompressed ``.npz`` (what ``np.savez`` and every writer
  here produce) stores each ``.npy`` byte for byte, so :func:`load_generated` reads the zip
  local headers, finds where each array's data starts, and ``np.memmap``\\ s it in place.
- A compressed ``.npz`` (``np.savez_compressed``) cannot be mapped; with ``mmap=True`` it is
  streamed once into a directory of ``.npy`` files that is mapped instead: in the user's cache
  (``$DMAT_CACHE``, else ``~/.cache/dmat``; keyed by the file's path, size and modification time,
  rebuilt when they change), never beside the input, so a set in a read-only folder reads and a
  refused file leaves nothing behind (the cache is kept only once the arrays are valid). Where
  the cache cannot be written, the set is read into memory instead. A directory of
  ``image.npy`` and ``label.npy`` is also accepted as a generated set.

Every writer is atomic (temporary file, then ``os.replace``): a crash leaves no partial file.
"""
from __future__ import annotations

# Size: about 310 lines on purpose: one file format, its reader (mapped, checked) and its writers together.

import hashlib
import json
import os
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from ..common.checkpoint import atomic_open, atomic_write_text

__all__ = ["IMAGE_SHAPE", "load_generated", "is_generated_set", "save_generated", "merge_generated",
           "npz_to_npy_dir", "validate_generated", "cache_root"]

PathLike = Union[str, os.PathLike]
IMAGE_SHAPE = (32, 32, 3)
_CHUNK = 8192  # images per chunk when streaming
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the same arrays give the same bytes


def validate_generated(images: np.ndarray, labels: np.ndarray, num_classes: Optional[int] = 10,
                       where: str = "generated data", shape: Optional[tuple] = IMAGE_SHAPE) -> None:
    """Check the format: uint8 (N, *shape) images, integer (N,) labels in [0, num_classes).

    ``shape``: the (H, W, C) of the dataset (default CIFAR's (32, 32, 3)); None accepts any
    NHWC image with 1 (grey) or 3 (RGB) channels."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        got = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"{where}: 'image' must be uint8, got {got}")
    if shape is not None and (images.ndim != 4 or images.shape[1:] != tuple(shape)):
        raise ValueError(f"{where}: 'image' must have shape (N, {', '.join(map(str, shape))}) (NHWC), "
                         f"got {images.shape}")
    if shape is None and (images.ndim != 4 or images.shape[-1] not in (1, 3)):
        raise ValueError(f"{where}: 'image' must have shape (N, H, W, C) with C = 1 or 3 (NHWC), "
                         f"got {images.shape}")
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
        got = labels.dtype if isinstance(labels, np.ndarray) else type(labels).__name__
        raise ValueError(f"{where}: 'label' must be an integer array, got {got}")
    if labels.ndim != 1:
        raise ValueError(f"{where}: 'label' must have shape (N,), got {labels.shape}")
    if len(labels) != len(images):
        raise ValueError(f"{where}: {len(images)} images but {len(labels)} labels")
    if num_classes is not None and len(labels):
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{where}: labels out of range [0, {num_classes}): "
                             f"min {lo}, max {hi}")


# --------------------------------------------------------------------------- reading

def _read_npy_header(f) -> tuple[tuple, bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    return np.lib.format._read_array_header(f, version)  # (3, 0): no public reader


def _memmap_stored_npz(path: Path) -> Optional[dict[str, np.ndarray]]:
    """Map every member of an uncompressed ``.npz`` in place; None if any is compressed."""
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        infos = [i for i in zf.infolist() if i.filename.endswith(".npy")]
        if any(i.compress_type != zipfile.ZIP_STORED for i in infos):
            return None
        for info in infos:
            f.seek(info.header_offset)
            local = f.read(30)  # zip local file header: fixed 30 bytes, then name, extra
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise ValueError(f"{path}: corrupt zip local header for {info.filename}")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            f.seek(start)
            shape, fortran, dtype = _read_npy_header(f)
            if dtype.hasobject:
                raise ValueError(f"{path}: {info.filename} holds Python objects; refused")
            offset = f.tell()
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if offset + nbytes > start + info.file_size:
                raise ValueError(f"{path}: {info.filename} is truncated")
            key = info.filename[:-4]
            if nbytes == 0:
                out[key] = np.empty(shape, dtype)
            else:
                out[key] = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                                     order="F" if fortran else "C")
    return out


def npz_to_npy_dir(path: PathLike, out_dir: PathLike) -> Path:
    """Stream each member of an ``.npz`` (compressed or not) into ``out_dir/<key>.npy``.

    Memory use stays small whatever the file size. ``out_dir/source.json`` records the
    source's size and mtime; :func:`load_generated` rebuilds the directory when they change.
    """
    path, out_dir = Path(path), Path(out_dir)
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.filename.endswith(".npy"):
                with zf.open(info) as src, atomic_open(out_dir / Path(info.filename).name) as dst:
                    shutil.copyfileobj(src, dst, 16 << 20)
    st = path.stat()
    atomic_write_text(out_dir / "source.json", json.dumps(
        {"source": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}))
    return out_dir


def _cache_is_fresh(path: Path, cache: Path) -> bool:
    try:
        rec = json.loads((cache / "source.json").read_text())
    except (OSError, ValueError):
        return False
    st = path.stat()
    return rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns


def cache_root() -> Path:
    """Where compressed sets are unpacked for mapping: ``$DMAT_CACHE``, else ``~/.cache/dmat``
    (``$XDG_CACHE_HOME/dmat`` when that is set)."""
    if os.environ.get("DMAT_CACHE"):
        return Path(os.environ["DMAT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dmat"


def _cache_for(path: Path) -> Path:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]
    return cache_root() / "npz-mmap" / f"{path.stem}-{key}"


def _load_dir(path: Path, mmap: bool) -> dict[str, np.ndarray]:
    files = {p.stem: p for p in path.glob("*.npy")}
    return {k: np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False) for k, p in files.items()}


def _check_arrays(path: Path, arrays: dict, num_classes: Optional[int], shape: Optional[tuple] = None) -> None:
    """A read set's keys, dtypes, lengths, labels; ``shape``: its images' (H, W, C) (None: any)."""
    missing = [k for k in ("image", "label") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; found {sorted(arrays)} "
                         "(expected 'image' and 'label')")
    validate_generated(arrays["image"], arrays["label"], num_classes, where=str(path), shape=shape)


def _unpacked(path: Path, cache_dir: Optional[Path], num_classes: Optional[int]) -> Optional[dict]:
    """The arrays of a compressed ``.npz``, mapped from a cache folder of ``.npy`` files; the folder is
    kept only when the arrays are valid (None: no cache can be written here, read into memory)."""
    cache = cache_dir or _cache_for(path)
    if _cache_is_fresh(path, cache):
        return _load_dir(cache, True)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{cache.name}.", suffix=".tmp"))
    except OSError:
        return None
    try:
        npz_to_npy_dir(path, tmp)
        _check_arrays(path, _load_dir(tmp, True), num_classes)
        if cache.exists():
            shutil.rmtree(cache, ignore_errors=True)
        try:
            os.replace(tmp, cache)
        except OSError:
            if not _cache_is_fresh(path, cache):       # not another process (a DDP rank) that won the race
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _load_dir(cache, True)


def _load_arrays(path: Path, mmap: bool, cache_dir: Optional[Path],
                 num_classes: Optional[int] = None) -> dict[str, np.ndarray]:
    if path.is_dir():
        return _load_dir(path, mmap)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a valid .npz (zip) file: truncated, or another format")
    if mmap:
        arrays = _memmap_stored_npz(path)
        if arrays is None:
            arrays = _unpacked(path, cache_dir, num_classes)
        if arrays is not None:
            return arrays
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def load_generated(path: PathLike, num_classes: Optional[int] = 10, mmap: bool = True,
                   cache_dir: Optional[PathLike] = None,
                   shape: Optional[tuple] = IMAGE_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Load and validate a generated set (``.npz`` or a directory of ``image.npy``/``label.npy``).

    Args:
        path: the ``.npz`` file (or directory).
        num_classes: labels must lie in ``[0, num_classes)``; None skips the range check.
        mmap: memory-map instead of reading (see the module docstring for how).
        cache_dir: where a compressed ``.npz`` is unpacked for mapping (default: a folder of
            the user's cache, :func:`cache_root`; never beside the input).
        shape: the (H, W, C) the images must have (None: any, see :func:`validate_generated`).

    Returns:
        ``(images, labels)``: uint8 (N, 32, 32, 3) and integer (N,) arrays (read-only
        ``np.memmap`` when mapped).

    Raises:
        FileNotFoundError: no such file. ValueError: wrong keys, dtype, shape, label range
            or lengths, or not a valid file; the message names the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"generated data not found: {path}")
    try:
        arrays = _load_arrays(path, mmap, Path(cache_dir) if cache_dir else None, num_classes)
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from e
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path}: unreadable generated-data file ({type(e).__name__}: {e})") from e
    _check_arrays(path, arrays, num_classes, shape)
    return arrays["image"], arrays["label"]


def is_generated_set(path: PathLike, shape: Optional[tuple] = IMAGE_SHAPE,
                     num_classes: Optional[int] = 10) -> bool:
    """Whether `path` is a valid generated set of (H, W, C) = `shape` images, as
    :func:`load_generated` would read it (a file of another shape, or no valid set at all: False).
    For choosing among files, e.g. notebook 07 picking a digits set out of a folder."""
    try:
        load_generated(path, num_classes=num_classes, shape=shape)
    except (FileNotFoundError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------- writing

def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return x if isinstance(x, np.ndarray) else np.asarray(x)


def save_generated(path: PathLike, images, labels, num_classes: Optional[int] = None,
                   shape: Optional[tuple] = IMAGE_SHAPE) -> None:
    """Validate and write a generated set as an uncompressed ``.npz`` (atomic, byte-reproducible).

    ``images`` uint8 (N, 32, 32, 3) NHWC RGB (or the ``shape`` given; None: any), ``labels``
    integer (N,) (numpy or torch).
    """
    images, labels = _as_numpy(images), _as_numpy(labels)
    validate_generated(images, labels, num_classes, where=f"save_generated({path})", shape=shape)
    with atomic_open(path, "wb") as f, \
            zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, a in (("image", images), ("label", labels)):
            _write_npy_member(zf, key, a.shape, a.dtype, (a[i:i + _CHUNK] for i in range(0, len(a), _CHUNK)))


def _write_npy_member(zf: zipfile.ZipFile, key: str, shape: tuple, dtype: np.dtype,
                      chunks: Iterable[np.ndarray]) -> None:
    """Write ``key.npy`` into an open zip from chunks, never holding the whole array."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": shape}
    with zf.open(zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME), "w", force_zip64=True) as m:
        np.lib.format.write_array_header_1_0(m, header)
        for c in chunks:
            m.write(np.ascontiguousarray(c, dtype=dtype).tobytes())


def merge_generated(paths: Sequence[PathLike], out: PathLike,
                    num_classes: Optional[int] = 10, shape: Optional[tuple] = IMAGE_SHAPE) -> tuple[int, ...]:
    """Concatenate generated sets (each validated first) into one uncompressed ``.npz``.

    Arrays are streamed chunk by chunk from memory maps, so sets larger than memory merge.
    ``shape``: the (H, W, C) every input must have (None: any, but the same in all).
    Returns the number of images taken from each input.
    """
    if not paths:
        raise ValueError("merge_generated: no input files")
    sets = [load_generated(p, num_classes=num_classes, mmap=True, shape=shape) for p in paths]
    shapes = sorted({tuple(x.shape[1:]) for x, _ in sets})
    if len(shapes) > 1:
        raise ValueError(f"merge_generated: the inputs hold images of different shapes {shapes}")
    n = sum(len(y) for _, y in sets)
    label_dtype = np.result_type(*[y.dtype for _, y in sets])

    def chunks(k):
        for s in sets:
            for i in range(0, len(s[k]), _CHUNK):
                yield s[k][i:i + _CHUNK]

    with atomic_open(out, "wb") as f, \
            zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        _write_npy_member(zf, "image", (n, *shapes[0]), np.dtype(np.uint8), chunks(0))
        _write_npy_member(zf, "label", (n,), label_dtype, chunks(1))
    return tuple(len(y) for _, y in sets)
