"""Atomic writers never leave partial files; checkpoints load with weights_only; RNG state round-trips."""
import random

import numpy as np
import pytest
import torch

from dmat_core.common import checkpoint as ckpt


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


def test_atomic_save_and_load(tmp_path):
    obj = {"w": torch.arange(4.0), "step": 7, "name": "wrn", "list": [1, 2.5, None]}
    path = tmp_path / "sub" / "model.pt"
    ckpt.atomic_save(obj, path)
    got = ckpt.load_checkpoint(path)
    assert torch.equal(got["w"], obj["w"]) and got["step"] == 7 and got["list"] == [1, 2.5, None]
    assert _files(path.parent) == ["model.pt"]


def test_crash_mid_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    ckpt.atomic_save({"version": 1}, path)

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half of a checkpoint")
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(RuntimeError, match="killed while writing"):
        ckpt.atomic_save({"version": 2}, path)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path) == {"version": 1}
    assert _files(tmp_path) == ["model.pt"]  # no temporary file left behind


def test_crash_before_first_save_leaves_nothing(tmp_path):
    with pytest.raises(KeyError):
        with ckpt.atomic_open(tmp_path / "out.bin") as f:
            f.write(b"partial")
            raise KeyError("boom")
    assert _files(tmp_path) == []


def test_atomic_bytes_text_savez(tmp_path):
    ckpt.atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    ckpt.atomic_write_text(tmp_path / "b.txt", "sigma = 0.5\n")
    ckpt.atomic_savez(tmp_path / "c.npz", image=np.zeros((2, 32, 32, 3), np.uint8), label=np.arange(2))
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text() == "sigma = 0.5\n"
    with np.load(tmp_path / "c.npz") as z:  # written exactly at the path, no suffix added
        assert z["image"].shape == (2, 32, 32, 3) and list(z["label"]) == [0, 1]
    assert _files(tmp_path) == ["a.bin", "b.txt", "c.npz"]


class _NotWeights:
    pass


def test_invalid_checkpoints_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")
    good = tmp_path / "good.pt"
    ckpt.atomic_save({"w": torch.randn(100)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    code = tmp_path / "code.pt"
    torch.save({"obj": _NotWeights()}, code)
    for bad in (truncated, garbage, code):
        with pytest.raises(ValueError, match=rf"{bad.name}: not a valid checkpoint"):
            ckpt.load_checkpoint(bad)


def _draws(g):
    return (torch.rand(3), torch.randn(2), torch.randn(3, generator=g),
            torch.randn(2, device="cuda") if torch.cuda.is_available() else None)


def _equal(a, b):
    for u, v in zip(a, b):
        if isinstance(u, torch.Tensor):
            assert torch.equal(u.cpu(), v.cpu())


def test_rng_round_trip_through_weights_only_file(tmp_path):
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(4)
    _draws(g)
    state = ckpt.rng_state({"sampler": g})
    ckpt.atomic_save({"rng": state}, tmp_path / "rng.pt")
    first = _draws(g)
    loaded = ckpt.load_checkpoint(tmp_path / "rng.pt")["rng"]  # weights_only=True
    torch.manual_seed(99), g.manual_seed(99)
    ckpt.set_rng_state(loaded, {"sampler": g})
    _equal(first, _draws(g))


def test_rng_state_holds_only_what_runs_draw_from():
    """Only torch's generators: Python's and numpy's global states start from the OS's entropy and no
    trainer uses them, so storing them made two identical runs write different checkpoints."""
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    a = ckpt.rng_state()
    random.seed(5), np.random.seed(6)
    b = ckpt.rng_state()
    assert set(a) == {"torch", "cuda", "generators"} and torch.equal(a["torch"], b["torch"])
    old = {**a, "python": {"state": torch.zeros(3)}, "numpy": {}}   # a checkpoint of before: ignored
    ckpt.set_rng_state(old)


def test_rng_state_generators_by_position_and_missing_name():
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    state = ckpt.rng_state([g1, g2])
    a = torch.rand(2, generator=g2)
    ckpt.set_rng_state(state, [g1, g2])
    assert torch.equal(a, torch.rand(2, generator=g2))
    with pytest.raises(KeyError, match="other"):
        ckpt.set_rng_state(state, {"other": g1})


def test_atomic_files_get_the_usual_permissions(tmp_path):
    import os

    from dmat_core.common.checkpoint import atomic_write_text
    atomic_write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask
