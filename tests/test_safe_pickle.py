"""safe_load_pickle admits plain data and numpy arrays, and refuses anything that runs code."""
import codecs
import io
import os
import pickle
import sys

import numpy as np
import pytest

from dmat_core.common.safe_pickle import safe_load_pickle, safe_loads_pickle


class _RunsCommand:
    """Pickles into a call of os.system: building the pickle never executes it."""

    def __reduce__(self):
        return (os.system, ("echo this must never run",))


class _OddCodec:
    def __reduce__(self):
        return (codecs.encode, ("text", "rot13"))


def _cifar_style_batch():
    return {b"batch_label": b"training batch 1 of 5",
            b"labels": [0, 3, 9],
            b"data": np.arange(3 * 3072, dtype=np.uint8).reshape(3, 3072),
            b"filenames": [b"a.png", b"b.png", b"c.png"]}


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_style_dict_loads(protocol, tmp_path):
    batch = _cifar_style_batch()
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    for source in (path, str(path), io.BytesIO(path.read_bytes())):
        got = safe_load_pickle(source)
        assert got[b"labels"] == [0, 3, 9] and got[b"filenames"] == batch[b"filenames"]
        np.testing.assert_array_equal(got[b"data"], batch[b"data"])
        assert got[b"data"].dtype == np.uint8


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_values_load(protocol):
    obj = {"scalar": np.float32(1.5), "i64": np.int64(-3), "fortran": np.asfortranarray(np.ones((2, 3))),
           "strided": np.arange(10)[::2], "record": np.zeros(2, dtype=[("a", "<i4"), ("b", "f8")]),
           "objects": np.array([1, "a", None], dtype=object), "nested": ({1, 2}, frozenset([3]), 2j)}
    got = safe_loads_pickle(pickle.dumps(obj, protocol=protocol))
    assert got["scalar"] == np.float32(1.5) and got["i64"] == -3
    for k in ("fortran", "strided", "record", "objects"):
        np.testing.assert_array_equal(got[k], obj[k])
    assert got["nested"] == obj["nested"]


def test_python2_strings_follow_encoding():
    # A Python 2 pickle of {'data': 1}: the key is a SHORT_BINSTRING (a py2 str).
    py2 = b"\x80\x02}q\x00U\x04dataq\x01K\x01s."
    assert safe_loads_pickle(py2, encoding="bytes") == {b"data": 1}
    assert safe_loads_pickle(py2, encoding="latin1") == {"data": 1}


def test_command_execution_is_refused(monkeypatch):
    payload = pickle.dumps({"data": _RunsCommand()}, protocol=2)
    calls = []  # if the global were ever resolved and called, this would record it instead
    monkeypatch.setattr(sys.modules[os.system.__module__], "system", calls.append)
    monkeypatch.setattr(os, "system", calls.append)
    with pytest.raises(pickle.UnpicklingError, match=r"refused to load global '(posix|nt|os)\.system'"):
        safe_loads_pickle(payload)
    assert calls == []


@pytest.mark.parametrize("obj", [_RunsCommand(), np.array([_RunsCommand()], dtype=object),
                                 [eval], _OddCodec()])
def test_other_globals_are_refused(obj):
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        safe_loads_pickle(pickle.dumps(obj, protocol=4))


def test_bad_encoding_argument():
    with pytest.raises(ValueError, match="encoding"):
        safe_loads_pickle(pickle.dumps(1), encoding="utf-16")
