"""`dmat generate`: shards the classifier side reads, made by samplers.run from latents seeded by
(seed, shard); a run stopped at any point and started again gives the same bytes; two torchrun
processes make the same shards as one; bad input is refused with the directory untouched."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dmat_core.cli.main import main
from dmat_core.diffusion.samplers import latent_noise, run
from dmat_core.images.gendata import load_generated
from dmat_core.images.generate import (MANIFEST, class_labels, generate, generate_shards, make_shard,
                                       shard_name, shard_seed, weights_sha256)
from dmat_core.images.pixels import model_to_image
from dmat_core.images.unet import build_image_denoiser, load_image_denoiser, save_image_denoiser

K = 4
SETTINGS = dict(n=12, shard_size=5, steps=2, batch_size=4, seed=3, progress=False)   # shards 5, 5, 2


def tiny_denoiser(num_classes=K, seed=0):
    """The tiny U-Net with every weight moved off its initialisation (the zero output conv would
    make D = c_skip x whatever the labels)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        D = build_image_denoiser("tiny", num_classes=num_classes)
        with torch.no_grad():
            for p in D.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return D.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("dm") / "tiny.pt"
    save_image_denoiser(path, tiny_denoiser())
    return path


def snapshot(d):
    """Every file under d with its bytes and mtime: what 'untouched' means."""
    return {p.relative_to(d): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.rglob("*")) if p.is_file()}


def shards(d):
    return {p.name: p.read_bytes() for p in sorted(d.glob("shard_*.npz"))}


def test_shards_are_valid_balanced_and_made_by_the_sampler(ckpt, tmp_path):
    s = generate(ckpt, tmp_path / "g", merge_to=tmp_path / "all.npz", **SETTINGS)
    assert (s["num_shards"], s["shards_made"], s["images_made"], s["nfe_per_image"]) == (3, 3, 12, 3)
    assert s["images_per_s"] > 0 and s["merge"] == "merged"
    m = json.loads((tmp_path / "g" / MANIFEST).read_text())
    D, arch = load_image_denoiser(ckpt)
    assert m["arch"] == arch and m["weights_sha256"] == weights_sha256(D) and m["checkpoint"] == str(ckpt)
    assert (m["sampler"], m["steps"], m["seed"], m["n"], m["shard_size"], m["num_classes"]) == ("heun", 2, 3, 12, 5, K)
    assert m["dmat_version"] and m["classes"] == list(range(K))

    parts = [load_generated(tmp_path / "g" / shard_name(i), num_classes=K) for i in range(3)]
    labels = np.concatenate([y for _, y in parts])
    assert labels.tolist() == [j % K for j in range(12)] and np.bincount(labels).tolist() == [3] * K
    x_all, y_all = load_generated(tmp_path / "all.npz", num_classes=K)
    assert np.array_equal(x_all, np.concatenate([x for x, _ in parts])) and np.array_equal(y_all, labels)
    # shard 1 is samplers.run (Heun, 2 steps) from latents seeded by (seed, 1) alone
    lat = latent_noise(5, (3, 32, 32), torch.Generator().manual_seed(shard_seed(3, 1)))
    y1 = torch.as_tensor(class_labels(5, 10, range(K)))
    with torch.no_grad():
        want = np.concatenate([model_to_image(run(D, lat[s:s + 4], "heun", 2, labels=y1[s:s + 4]))
                               for s in (0, 4)])
    assert np.array_equal(parts[1][0], want)
    # any shard can be made alone; another class on the same latents gives another image
    assert np.array_equal(make_shard(D, m, 2, batch_size=4)[0], parts[2][0])
    with torch.no_grad():
        other = model_to_image(run(D, lat[:4], "heun", 2, labels=(y1[:4] + 1) % K))
    assert not np.array_equal(other, want[:4])


def test_bf16_sampling_runs_the_network_in_bf16_and_stays_close():
    """amp='bf16' (the GPU setting; CPU autocast has it too) changes some pixels, by little."""
    from dmat_core.images.generate import sample_images
    D = tiny_denoiser()
    lat = latent_noise(6, (3, 32, 32), generator=torch.Generator().manual_seed(0)) * 80.0
    a = sample_images(D, lat, np.arange(6) % K, steps=4, amp="off")
    b = sample_images(D, lat, np.arange(6) % K, steps=4, amp="bf16")
    diff = np.abs(a.astype(int) - b.astype(int))
    assert 0 < (diff > 0).mean() < 0.05 and diff.max() <= 8


def test_stopped_or_failed_run_resumes_to_the_same_bytes(ckpt, tmp_path):
    generate(ckpt, tmp_path / "whole", **SETTINGS)
    # 1) the generator stopped after its first shard, plus a temporary file of a killed write
    it = generate_shards(ckpt, tmp_path / "cut", **SETTINGS)
    next(it)
    it.close()
    (tmp_path / "cut" / ".shard_00001.npz.abc123.tmp").write_bytes(b"half a shard")
    first = (tmp_path / "cut" / shard_name(0)).stat().st_mtime_ns
    s = generate(ckpt, tmp_path / "cut", **SETTINGS)
    assert s["shards_made"] == 2 and (tmp_path / "cut" / shard_name(0)).stat().st_mtime_ns == first
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == [MANIFEST] + [shard_name(i) for i in range(3)]
    assert shards(tmp_path / "cut") == shards(tmp_path / "whole")
    # 2) the network fails in the middle of shard 1: nothing of it is written
    D = load_image_denoiser(ckpt)[0]
    calls = {"n": 0}

    def fail_later(module, args):
        calls["n"] += 1
        if calls["n"] == 6 + 2:          # shard 0 takes 2 batches x 3 NFE; fail in shard 1
            raise RuntimeError("simulated crash")
    hook = D.register_forward_pre_hook(fail_later)
    with pytest.raises(RuntimeError, match="simulated"):
        generate(D, tmp_path / "fail", **SETTINGS)
    assert sorted(p.name for p in (tmp_path / "fail").iterdir()) == [MANIFEST, shard_name(0)]
    hook.remove()
    assert generate(D, tmp_path / "fail", **SETTINGS)["shards_made"] == 2
    assert shards(tmp_path / "fail") == shards(tmp_path / "whole")
    for i in range(3):
        a, b = (load_generated(tmp_path / d / shard_name(i)) for d in ("whole", "fail"))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def _cli(args, **popen):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def _gen_args(ckpt, out, n=16, shard_size=2):
    return ["-m", "dmat_core", "generate", "--checkpoint", str(ckpt), "--out", str(out), "--num-images", str(n),
            "--shard-size", str(shard_size), "--steps", "3", "--batch-size", "2", "--seed", "1", "--no-progress"]


def test_sigkill_mid_run_then_resume(ckpt, tmp_path):
    whole = _cli(_gen_args(ckpt, tmp_path / "whole"))
    assert whole.wait(timeout=240) == 0, whole.stderr.read()
    proc = _cli(_gen_args(ckpt, tmp_path / "killed"), start_new_session=True)
    while not list((tmp_path / "killed").glob("shard_*.npz")) and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted((tmp_path / "killed").glob("shard_*.npz"))
    assert 1 <= len(done) < 8
    for p in done:                                   # whatever was written is whole
        assert len(load_generated(p)[1]) == 2
    again = _cli(_gen_args(ckpt, tmp_path / "killed"))
    out, err = again.communicate(timeout=240)
    assert again.returncode == 0, err
    assert json.loads(out)["shards_made"] == 8 - len(done)
    assert shards(tmp_path / "killed") == shards(tmp_path / "whole")


def test_two_torchrun_processes_make_the_same_shards(ckpt, tmp_path):
    one = _cli(_gen_args(ckpt, tmp_path / "one", n=8))
    two = _cli(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                *_gen_args(ckpt, tmp_path / "two", n=8), "--merge", str(tmp_path / "two.npz")])
    out1, err1 = one.communicate(timeout=240)
    out2, err2 = two.communicate(timeout=240)
    assert one.returncode == 0, err1
    assert two.returncode == 0, err2[-3000:]
    s = json.loads(out2[out2.index("{"):])
    # each of the 4 shards made once (disjoint, complete): the count is summed over both ranks
    assert s["world_size"] == 2 and s["shards_made"] == 4 and s["images_made"] == 8
    assert shards(tmp_path / "two") == shards(tmp_path / "one") and len(shards(tmp_path / "one")) == 4
    x, y = load_generated(tmp_path / "two.npz", num_classes=K)
    assert y.tolist() == [j % K for j in range(8)]


@pytest.mark.parametrize("bad, match", [
    (dict(n=0), "n=0: n must be null or an integer >= 1"),
    (dict(shard_size=-1), "shard_size=-1: shard_size must be an integer >= 1"),
    (dict(classes=[0, K]), r"classes must be distinct labels in \[0, 4\)"),
    (dict(classes=[1, 1]), r"classes must be distinct labels, got \[1, 1\]"),
    (dict(batch_size=0), "batch_size=0: batch_size must be an integer >= 1"),
    (dict(sampler_kwargs={"S_churn": -1.0}), "S_churn=-1.0: the churn must be a finite number >= 0"),
    (dict(seed=4), "seed: 3 there, 4 now"),
    (dict(steps=3), "steps: 2 there, 3 now"),
    (dict(expect_arch="small"), "another architecture: size='tiny' in the file"),
])
def test_bad_input_is_refused_and_nothing_touched(ckpt, tmp_path, bad, match):
    generate(ckpt, tmp_path / "g", **SETTINGS)
    before = snapshot(tmp_path)
    with pytest.raises((ValueError, FileExistsError), match=match):
        generate(ckpt, tmp_path / "g", **{**SETTINGS, **bad})
    assert snapshot(tmp_path) == before


def test_other_directories_and_checkpoints_are_refused(ckpt, tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "shard_00000.npz").write_bytes(b"someone else's")
    unconditional = tmp_path / "uncond.pt"
    save_image_denoiser(unconditional, tiny_denoiser(num_classes=0))
    classifier = tmp_path / "classifier.pt"
    torch.save({"model_state_dict": {"w": torch.zeros(2)}}, classifier)
    before = snapshot(tmp_path)
    for args, match in [((ckpt, tmp_path / "foreign"), "but no manifest.json"),
                        ((unconditional, tmp_path / "u"), "not class-conditional"),
                        ((classifier, tmp_path / "c"), "not a dmat diffusion-model checkpoint")]:
        with pytest.raises((ValueError, FileExistsError), match=match):
            generate(*args, **SETTINGS)
        assert snapshot(tmp_path) == before and not (tmp_path / "u").exists()
    # the CLI: one line, exit 2; --overwrite replaces the other run's shards
    generate(ckpt, tmp_path / "g", **SETTINGS)
    before = snapshot(tmp_path)
    args = ["generate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "g"), "--n", "8",
            "--shard-size", "5", "--steps", "2", "--seed", "3", "--no-progress"]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and snapshot(tmp_path) == before
    (tmp_path / "mine.npz").write_bytes(b"not a merge of this run")
    before = snapshot(tmp_path)
    for extra in (["--merge", str(tmp_path / "mine.npz")], ["--filtered", str(tmp_path / "mine.npz")]):
        with pytest.raises(SystemExit) as e:           # refused before any image is made
            main(args[:4] + [str(tmp_path / "new")] + args[5:] + extra)
        assert e.value.code == 2 and snapshot(tmp_path) == before
    assert main(args + ["--overwrite"]) == 0
    assert sorted(shards(tmp_path / "g")) == [shard_name(0), shard_name(1)]
    assert json.loads((tmp_path / "g" / MANIFEST).read_text())["n"] == 8
