"""The output policy every ``dmat`` tool follows, and operating-system errors in one line.

1. **Nothing is created before the arguments are valid**: settings are checked first
   (:mod:`~dmat_core.common.settings`), then every output with the checks here, which only read.
2. **Outputs are checked before any work starts**: a file where a folder is expected (or the
   reverse), a folder that cannot be written (:func:`check_out_file`, :func:`check_out_dir`), and
   the free space where the size is known (:func:`check_free_space`).
3. **An existing output of another run or kind is refused unless** ``--overwrite``: a file is
   replaced only when it is this run's own (the caller says how to tell) or ``--overwrite`` is
   given; a folder of a run with other settings is refused by each tool's run check.
4. **Files appear only complete**: every writer is atomic (:mod:`~dmat_core.common.checkpoint`),
   and readers never write beside their input.
5. **Errors are one line** naming the path and what to do (:func:`describe_os_error`): exit code
   2 for bad input (anything found before :func:`start_work`), 1 for a failure during the work.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

__all__ = ["check_out_file", "check_out_dir", "check_free_space", "check_results_folder", "nearest_existing",
           "start_work", "work_started", "reset_phase", "describe_os_error"]

_PHASE = {"work": False}


def start_work() -> None:
    """Mark that the arguments and outputs are checked and the work begins: an operating-system
    error from now on is a failure during the work (exit code 1), not bad input (2)."""
    _PHASE["work"] = True


def work_started() -> bool:
    return _PHASE["work"]


def reset_phase() -> None:
    _PHASE["work"] = False


def nearest_existing(path) -> Path:
    """``path`` itself if it exists, else its closest ancestor that does (what a write creates under)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _writable_folder(path: Path, flag: str, target: Path) -> None:
    """The folder ``path`` exists (as a folder) and this process may create files in it."""
    if not path.is_dir():
        raise NotADirectoryError(f"{flag} {target}: {path} is a file, not a folder; choose another path")
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {target}: cannot write in {path} (read-only or not yours); "
                              "choose a folder you can write, or change its permissions")


def check_free_space(path, size: Optional[int], flag: str = "--out") -> None:
    """Refuse (OSError ENOSPC, one line) when the file system that ``path`` would be written to has
    less than ``size`` bytes (plus 1% and 1 MB of margin) free; ``size`` None: not known, no check."""
    if not size:
        return
    where = nearest_existing(path)
    free = shutil.disk_usage(where).free
    need = int(size * 1.01) + (1 << 20)
    if free < need:
        raise OSError(errno.ENOSPC, f"{flag} {path} needs about {_mb(need)}, but {where} has {_mb(free)} "
                      "free; free some space or write elsewhere")


def _mb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def check_out_file(path, *, flag: str = "--out", overwrite: bool = False, size: Optional[int] = None,
                   mine: Optional[Callable[[Path], bool]] = None) -> Path:
    """Check an output *file* before any work: not a folder; when it exists, replaced only if it is
    this run's own (``mine(path)`` True) or ``overwrite``; its folder (or the closest one that
    exists, where the missing ones will be made) writable; ``size`` bytes free. Reads only."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{flag} {p} is a folder; give a file name (e.g. {p / 'out.json'})")
    if p.exists() and not overwrite and not (mine is not None and mine(p)):
        raise FileExistsError(f"{flag} {p} exists; choose another file or pass --overwrite to replace it")
    _writable_folder(nearest_existing(p.parent), flag, p)
    check_free_space(p.parent, size, flag)
    return p


def check_out_dir(path, *, flag: str = "--out", size: Optional[int] = None) -> Path:
    """Check an output *folder* before any work: a folder or absent (then the closest existing
    ancestor must be a folder), writable, ``size`` bytes free. Reads only."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise NotADirectoryError(f"{flag} {p} is a file; a folder is expected here")
    _writable_folder(nearest_existing(p), flag, p)
    check_free_space(p, size, flag)
    return p


_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is used up: free some space or write elsewhere",
    errno.EACCES: "permission denied: choose a path you can use, or change its permissions",
    errno.EPERM: "not permitted: choose a path you can use, or change its permissions",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EISDIR: "this is a folder; a file is expected",
    errno.ENOENT: "no such file or folder",
    errno.EEXIST: "it exists already",
    errno.EIO: "the device reported an input/output error: check the disk",
}


def describe_os_error(e: OSError) -> str:
    """One line for an operating-system error: the path, what went wrong, what to do."""
    advice = _ADVICE.get(e.errno)
    if e.filename is None:                 # a sentence of dmat's (it says what to do), or a bare error
        if e.errno is None or len(e.args) < 2 or not e.strerror:
            return str(e)
        bare = e.strerror == os.strerror(e.errno)
        return e.strerror + (f" ({advice})" if bare and advice else "")
    where = f"{e.filename}" + (f" -> {e.filename2}" if getattr(e, "filename2", None) else "")
    reason = e.strerror or os.strerror(e.errno or 0)
    return f"{where}: {reason}" + (f" ({advice})" if advice and advice.lower() != reason.lower() else "")


def check_results_folder(out, *, what: str, differences: Callable[[dict], list], overwrite: bool = False,
                         flag: str = "--out", results: str = "results.json") -> Optional[dict]:
    """Check the output folder of a study before any work (reads only): a writable folder or absent;
    when it holds ``results`` already, they must be the JSON object of a ``what`` run whose settings
    ``differences(previous)`` finds none in (this run again, or its extension), unless ``overwrite``.
    Returns the previous results (None when there are none or ``overwrite``)."""
    from .settings import read_json_file
    p = check_out_dir(out, flag=flag)
    path = p / results
    if overwrite or not path.exists():
        return None
    advice = f"use another {flag}, or --overwrite to replace them"
    try:
        prev = read_json_file(path, "results file")
        diff = differences(prev)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        reason = str(e).removeprefix(f"{path}: ") if isinstance(e, ValueError) else f"no {e}"
        raise FileExistsError(f"{path} is not a results file of {what} ({reason}); {advice}") from None
    if diff:
        raise FileExistsError(f"{p} holds {what} results of other settings ({'; '.join(diff)}); {advice}")
    return prev
