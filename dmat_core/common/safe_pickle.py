"""Load pickles that may only contain plain data (the CIFAR python format, docs/science.md section 6).

A pickle is a small program: unpickling it may call any importable function
(``os.system`` included). The CIFAR batches are pickles, and a file found on the internet
or in a shared folder should not be able to run code. ``safe_load_pickle`` unpickles with
an allow-list: only plain containers and scalars (dict, list, tuple, set, str, bytes, int,
float, bool, None, ...) and the few numpy globals that rebuild an array, a dtype or a
numpy scalar. Any other global is refused with :class:`pickle.UnpicklingError` naming it.

Globals admitted, and why:

- ``builtins`` plain types (``dict``, ``list``, ``tuple``, ``set``, ``frozenset``, ``str``,
  ``bytes``, ``bytearray``, ``int``, ``float``, ``complex``, ``bool``): calling them only
  builds data. Most pickles never name them (opcodes build containers directly).
- ``_codecs.encode`` restricted to the latin-1 codec: Python 3 writes ``bytes`` this way at
  protocols 0-2 (``pickle.dumps(b'ab', protocol=2)``).
- ``numpy.ndarray``, ``numpy.dtype`` and ``_reconstruct`` / ``scalar`` / ``_frombuffer``
  from ``numpy.core`` (numpy 1.x names) or ``numpy._core`` (numpy 2.x names). Object arrays
  stay safe: their elements are unpickled by this same restricted unpickler.
"""
from __future__ import annotations

import builtins
import codecs
import io
import os
import pickle
from typing import IO, Any, Union

import numpy as np

__all__ = ["SafeUnpickler", "safe_load_pickle", "safe_loads_pickle", "ALLOWED_GLOBALS"]

_PLAIN_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray",
                   "int", "float", "complex", "bool")


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 pickles use it for ``bytes`` (latin-1 only)."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(obj, str):
        raise pickle.UnpicklingError(
            f"refused _codecs.encode with encoding {encoding!r}: only latin-1 (how pickle "
            "stores bytes) is allowed")
    return obj.encode("latin-1", errors)


def _numpy_core(module: str) -> Any:
    """The numpy module behind a pickled name, ``numpy.core.*`` or ``numpy._core.*``."""
    import importlib
    sub = module.split(".", 2)[2]  # multiarray / numeric
    for prefix in ("numpy._core.", "numpy.core."):  # numpy 2 first: no deprecation warning
        try:
            return importlib.import_module(prefix + sub)
        except ImportError:
            continue
    raise pickle.UnpicklingError(f"cannot import {module} in numpy {np.__version__}")


def _allowed() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {}
    for name in _PLAIN_BUILTINS:
        table[("builtins", name)] = getattr(builtins, name)
        table[("__builtin__", name)] = getattr(builtins, name)  # Python 2 pickles
    table[("_codecs", "encode")] = _latin1_encode
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = (f"{core}.multiarray", "_reconstruct")
        table[(f"{core}.multiarray", "scalar")] = (f"{core}.multiarray", "scalar")
        table[(f"{core}.numeric", "_frombuffer")] = (f"{core}.numeric", "_frombuffer")
    return table


#: (module, name) pairs that the unpickler will resolve; everything else is refused.
ALLOWED_GLOBALS = _allowed()


class SafeUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` whose ``find_class`` admits only :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        target = ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(
                f"refused to load global '{module}.{name}': this pickle may only contain "
                "plain data (dict, list, tuple, str, bytes, numbers, None, numpy arrays). "
                "It is either not a data file or it tries to run code.")
        if isinstance(target, tuple):  # a numpy internal, looked up lazily
            return getattr(_numpy_core(target[0]), target[1])
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"refused persistent id {pid!r}: plain data only")


def safe_load_pickle(fileobj_or_path: Union[str, os.PathLike, IO[bytes]],
                     encoding: str = "bytes") -> Any:
    """Unpickle plain data from a path or a binary file object.

    Args:
        fileobj_or_path: a path, or an open binary file object (e.g. a tar member).
        encoding: how Python 2 ``str`` objects are decoded. ``'bytes'`` (default) keeps them
            as ``bytes``, which is how the CIFAR files are read (keys ``b'data'``,
            ``b'labels'``); ``'latin1'`` turns them into ``str``.

    Raises:
        pickle.UnpicklingError: the pickle names a global outside :data:`ALLOWED_GLOBALS`,
            or is corrupt.
    """
    if encoding not in ("bytes", "latin1", "latin-1", "ASCII", "ascii"):
        raise ValueError(f"encoding must be 'bytes' or 'latin1', got {encoding!r}")
    if isinstance(fileobj_or_path, (str, os.PathLike)):
        with open(fileobj_or_path, "rb") as f:
            return SafeUnpickler(f, encoding=encoding).load()
    return SafeUnpickler(fileobj_or_path, encoding=encoding).load()


def safe_loads_pickle(data: bytes, encoding: str = "bytes") -> Any:
    """:func:`safe_load_pickle` for a pickle held in memory."""
    return safe_load_pickle(io.BytesIO(data), encoding=encoding)
