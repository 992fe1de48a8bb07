"""Crash-safe files and checkpoints, and the random state that makes a resumed run exact.

A run killed while writing must never leave a half-written file where the previous good one
was. Every writer here goes through :func:`atomic_open`: write a temporary file in the same
directory, flush and ``fsync`` it, then ``os.replace`` it onto the target (atomic on POSIX
and Windows). On any error the temporary file is removed and the old target is untouched.

Checkpoints are loaded with ``torch.load(weights_only=True)``: tensors, numbers, strings,
lists, tuples and dicts only, no code. :func:`rng_state` therefore stores generator states as
tensors: torch's CPU and CUDA generators and any ``torch.Generator`` passed in, the only random
state dmat's trainers draw from (each reseeds them from the run's seed and step). Python's
``random`` and numpy's global generator are not stored: no trainer uses them, and they start from
the operating system's entropy, so storing them made two identical runs write different files.

An operating-system error while writing (a full disk, a folder that cannot be written) is raised
as an ``OSError`` that names the file being written (:func:`atomic_open`).
"""
from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import IO, Any, Iterator, Mapping, Sequence, Union

import numpy as np
import torch

__all__ = ["atomic_open", "atomic_save", "atomic_write_bytes", "atomic_write_text",
           "atomic_savez", "load_checkpoint", "rng_state", "set_rng_state"]

PathLike = Union[str, os.PathLike]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on clean exit it atomically becomes ``path``.

    On an exception inside the block the temporary file is deleted and ``path`` keeps its
    previous content (or stays absent). Parent directories are created.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open writes files; mode must contain 'w', got {mode!r}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _naming(e, path) from None
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)   # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        os_error = _os_error_in(e)        # torch.save reports a failed write as a RuntimeError
        if os_error is not None:
            raise _naming(os_error, path) from None
        raise
    _fsync_dir(path.parent)


def _naming(e: OSError, path: Path) -> OSError:
    """The same error, naming the file being written (errors of writes to an open file name none)."""
    if e.filename is not None or e.errno is None:
        return e
    return type(e)(e.errno, e.strerror or os.strerror(e.errno), str(path))


def _os_error_in(e: BaseException):
    """The OSError that ``e`` is, or that caused it (a few links up its chain), else None."""
    for _ in range(4):
        if e is None or isinstance(e, OSError):
            return e
        if not isinstance(e, RuntimeError):
            return None
        e = e.__cause__ or e.__context__
    return None


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: not possible on every OS)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w", encoding=encoding, newline="") as f:
        f.write(text)


def atomic_savez(path: PathLike, **arrays: np.ndarray) -> None:
    """``np.savez`` (uncompressed, so members can be memory-mapped) written atomically.

    The file is written exactly at ``path`` (no ``.npz`` suffix is appended).
    """
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a checkpoint that loads safely (truncated, not a torch
            file, or it holds objects other than tensors and plain data); names the file.
    """
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; a checkpoint file is expected")
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
            # torch's own message goes on to explain how to load the file without the check
            # (weights_only=False): the one thing not to do with a file that holds code.
            raise ValueError(
                f"{path}: not a valid checkpoint: it holds Python objects other than tensors and plain "
                "data, which could run code when loaded; refused (dmat loads weights only)") from None
        first_line = (str(e).splitlines() or [""])[0]
        raise ValueError(
            f"{path}: not a valid checkpoint ({type(e).__name__}: {first_line}). It may be "
            "truncated, or not written by torch.save.") from None


# --------------------------------------------------------------------------- RNG state

Generators = Union[Mapping[str, torch.Generator], Sequence[torch.Generator], None]


def _named(generators: Generators) -> dict[str, torch.Generator]:
    if generators is None:
        return {}
    if isinstance(generators, torch.Generator):
        return {"0": generators}
    if isinstance(generators, Mapping):
        return {str(k): g for k, g in generators.items()}
    return {str(i): g for i, g in enumerate(generators)}


def rng_state(generators: Generators = None) -> dict[str, Any]:
    """The random state of torch a run draws from, in a form ``torch.load(weights_only=True)``
    accepts (see the module docstring for why Python's and numpy's are left out).

    Args:
        generators: extra ``torch.Generator`` objects (a dict name -> generator, or a list)
            such as a data sampler's or an augmentation's generator.

    Returns:
        ``{'torch': ByteTensor, 'cuda': [ByteTensor, ...], 'generators': {name: ByteTensor}}``.
    """
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {k: g.get_state() for k, g in _named(generators).items()},
    }


def set_rng_state(state: Mapping[str, Any], generators: Generators = None) -> None:
    """Restore what :func:`rng_state` captured (pass the same ``generators``, same names). The
    Python and numpy states that checkpoints of earlier versions hold are ignored (never used)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = list(state.get("cuda", []))
    if cuda:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            warnings.warn(f"checkpoint holds {len(cuda)} CUDA RNG states but this machine has "
                          f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} "
                          "CUDA devices: CUDA random state not restored", stacklevel=2)
    saved = state.get("generators", {})
    for k, g in _named(generators).items():
        if k not in saved:
            raise KeyError(f"no saved state for generator {k!r} (saved: {sorted(saved)})")
        g.set_state(saved[k].cpu())
