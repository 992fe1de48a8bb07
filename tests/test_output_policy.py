"""What the output policy allows (the refusals are tests/test_refusals.py): two identical runs write
identical checkpoints, a damaged shard is made again and said so, --overwrite replaces, a reader
writes nothing beside its input, --debug shows the traceback."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from dmat_core.cli.main import main
from dmat_core.images import data
from dmat_core.images.generate import MANIFEST, generate, shard_name
from dmat_core.images.unet import build_image_denoiser, save_image_denoiser


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    data.write_tiny_cifar(root, n_train_per_batch=16, n_test=16, seed=0)      # 80 training images
    return root


def test_two_identical_runs_write_identical_checkpoints(cifar, tmp_path):
    """`train-at` and `train-dm`, each run twice by two processes in two folders (relative --out, so the
    settings are the same strings): two processes, as two runs of a user are, each with its own
    OS-seeded Python and numpy random state, which a checkpoint therefore must not hold."""
    at = ["train-at", "--preset", "cpu-quick", "--data-dir", str(cifar), "--out", "at", "--steps", "4",
          "--n-val", "16", "--val-every", "2", "--checkpoint-every", "2", "--no-progress",
          "--set", 'arch_kw={"width": 4}', "--set", "attack_steps=1", "--set", "val_steps=1"]
    dm = ["train-dm", "--preset", "cpu-quick", "--data-dir", str(cifar), "--out", "dm", "--steps", "3",
          "--batch", "8", "--checkpoint-every", "3", "--at-variant", "random", "--noise-p", "0.5", "--no-progress",
          "--set", "sample_per_class=1", "--set", "sample_steps=1"]
    code = f"from dmat_core.cli.main import main; assert main({at!r}) == 0; assert main({dm!r}) == 0"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    procs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path / name, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    a, b = tmp_path / "a", tmp_path / "b"
    for f in ("at/checkpoint.pt", "at/best.pt", "at/final.pt", "at/config.json",
              "dm/checkpoint.pt", "dm/denoiser.pt", "dm/config.json", "dm/samples/step_000003.png"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_a_damaged_shard_is_made_again_and_said_so(tmp_path, capsys):
    torch.manual_seed(0)
    save_image_denoiser(tmp_path / "dm.pt", build_image_denoiser("tiny", num_classes=4))
    kw = dict(n=6, shard_size=2, steps=1, batch_size=2, progress=False)
    generate(tmp_path / "dm.pt", tmp_path / "g", **kw)
    good = {i: (tmp_path / "g" / shard_name(i)).read_bytes() for i in range(3)}
    manifest = json.loads((tmp_path / "g" / MANIFEST).read_text())
    assert set(manifest["shards"]) == {shard_name(i) for i in range(3)}
    (tmp_path / "g" / shard_name(1)).write_bytes(good[1][:-50])                # truncated
    changed = bytearray(good[2])
    changed[-30] ^= 0xFF                                                       # same size, one byte flipped
    (tmp_path / "g" / shard_name(2)).write_bytes(bytes(changed))
    capsys.readouterr()
    s = generate(tmp_path / "dm.pt", tmp_path / "g", **kw)
    err = capsys.readouterr().err
    assert s["shards_made"] == 2 and s["shards_repaired"] == 2
    assert f"{shard_name(1)}: damaged: {len(good[1]) - 50} bytes" in err and f"{shard_name(2)}: damaged: its bytes" in err
    assert {i: (tmp_path / "g" / shard_name(i)).read_bytes() for i in range(3)} == good
    assert generate(tmp_path / "dm.pt", tmp_path / "g", **kw)["shards_made"] == 0   # all verified now
    # the same through the CLI: exit 0, one line saying what was made again
    (tmp_path / "g" / shard_name(0)).write_bytes(b"")
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(tmp_path / "dm.pt"), "--out", str(tmp_path / "g"), "--n", "6",
                 "--shard-size", "2", "--steps", "1", "--batch-size", "2", "--no-progress"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["shards_repaired"] == 1 and "made again: damaged" in out.err
    assert (tmp_path / "g" / shard_name(0)).read_bytes() == good[0]


def test_overwrite_replaces_and_a_compressed_set_is_read_without_writing_beside_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DMAT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(0)
    np.savez_compressed(tmp_path / "in" / "set.npz", image=rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8),
                        label=np.arange(12) % 3)
    out = tmp_path / "q.json"
    out.write_text("{}\n")
    argv = ["gen-quality", str(tmp_path / "in" / "set.npz"), "--out", str(out)]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and out.read_text() == "{}\n"
    assert main(argv + ["--overwrite"]) == 0
    assert json.loads(out.read_text())["n"] == 12
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["set.npz"]     # nothing beside the input


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["toy", "sample", "--dist", "ring8", "--n", "10", "--json", "--out", str(tmp_path)])
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(IsADirectoryError):
        main(["--debug", "toy", "sample", "--dist", "ring8", "--n", "10", "--json", "--out", str(tmp_path)])


def test_an_interrupted_merge_target_is_checked_before_any_image(tmp_path):
    """--merge into a file of another kind is refused before the first shard is made, not after the last."""
    torch.manual_seed(0)
    save_image_denoiser(tmp_path / "dm.pt", build_image_denoiser("tiny", num_classes=4))
    (tmp_path / "other.npz").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="--merge .*other.npz exists"):
        generate(tmp_path / "dm.pt", tmp_path / "g", n=4, shard_size=2, steps=1, progress=False,
                 merge_to=tmp_path / "other.npz")
    assert not (tmp_path / "g").exists()
    shutil.rmtree(tmp_path / "g", ignore_errors=True)


def test_a_run_folder_of_an_earlier_version_is_still_resumed(tmp_path):
    """config.json files written before the settings were typed say device: null (then: auto); they
    are read as such (a file format's migration), while a new setting of null is refused."""
    from dmat_core.images.dm_config import make_dm_config
    from dmat_core.images.dm_train import check_run
    cfg = make_dm_config("cpu-quick", out_dir=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**cfg.to_dict(), "device": None}))
    assert check_run(cfg) == "resume"
    with pytest.raises(ValueError, match="device=null"):
        make_dm_config("cpu-quick", device=None)
