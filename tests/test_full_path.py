"""Full mode executed: the full presets of the image pipelines, with their full-size models, data
shapes and settings, through the real entry points, cut to a handful of steps and points.

- data: a CIFAR-10 archive of the full size and layout, written here in the python format
  (data_batch_1..5 of 10,000 images and a test_batch of 10,000, 32x32x3, ~180 MB; random pixels
  through `write_tiny_cifar`'s format writer), so that the epoch rule, the held-out split and the
  mixed sampler see CIFAR-10's sizes; and a generated set of the paper's format and image shape
  (20,000 random images, not the paper's 1M: the size of the set only changes how many indices
  the sampler draws from);
- (a) `dmat train-at --preset colab-small` (PreActResNet-18, TRADES-10, generated fraction 0.7), 2
  steps, through the CLI; `train_at` with `paper-wrn28-10` (WRN-28-10), 1 step [slow];
- (b) `train_dm` with `colab-small` (the 7.0M U-Net), 1 step; `paper` (the 57.6M U-Net, the
  adversarial variant on 90% noisy images), 1 step [slow];
- (c) `dmat generate` from the resulting checkpoints: Heun (deterministic, shards of 10,000, the
  paper's defaults) cut to 2 steps from colab-small; the paper's 20 steps from paper [slow];
- (d) `dmat eval` with standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) on the PreActResNet-18
  checkpoint, 2 points, APGD/FAB cut to 2 iterations and Square to 10 queries; the same at full
  length [slow, on a GPU only]. The points are labelled with the model's own prediction, so every
  attack of the sequence has points to attack.

What is cut: the number of steps; the batch (4 for train-at, 2 for train-dm; the presets' own
batch with DMAT_SMOKE_FULL_BATCH=1); the held-out images that validation attacks with the
preset's PGD-40 (n_val 2); the sample grid of train-dm (1 image per class, 2 Heun steps, instead of
8 x 18); the images evaluated. Everything else is the preset's.

Device: the CPU by default. The same tests run on a GPU (bench/gpu_check.sh) with
    DMAT_SMOKE_DEVICE=cuda       (default cpu)
    DMAT_SMOKE_AMP=bf16|off      (default: bf16 on CUDA, off on the CPU)
    DMAT_SMOKE_CHANNELS_LAST=1|0 (default: 1 on CUDA, 0 on the CPU)
    DMAT_SMOKE_FULL_BATCH=1      (the presets' batch sizes, 512 / 512 / 128 / 512: for a GPU)
A CUDA device asked for but not there is an error, not a skip.

Measured here, wall seconds on the 2-core CPU while other jobs held it (load average 8-11;
OMP_NUM_THREADS=1; an idle machine takes a fraction of these):
    archive + generated set (module fixture)            43-84
    (a) train-at colab-small, 2 steps, batch 4           145-366
    (d) eval, standard AA cut short, 2 points            156-225
    (b) train-dm colab-small, 1 step, batch 2            56-70
    (c) generate Heun-2, 2 images                        5-10
    the default run in all: 434-702 s wall for 66 s of CPU time (56 user + 10 system)
  slow (make test-slow), one run, load 10-11:
    (a) train-at paper-wrn28-10, 1 step, batch 2         725
    (b) train-dm paper, 1 step, batch 2                  630
    (c) generate Heun-20 from paper, 2 images            576
    in all 2052 s; (d) at full length is skipped on a CPU (see its reason)
  with DMAT_SMOKE_AMP=bf16 DMAT_SMOKE_CHANNELS_LAST=1 on the CPU (the GPU settings): the default
  run passes, 531 s.
"""
import json
import math
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dmat_core.cli.main import main as dmat
from dmat_core.common.checkpoint import atomic_write_bytes
from dmat_core.images.cifar import CIFAR, _batch_pickle, load_cifar
from dmat_core.images.dm_config import DM_PRESETS, make_dm_config
from dmat_core.images.dm_train import train_dm
from dmat_core.images.gendata import load_generated, save_generated
from dmat_core.robust.config import PRESETS, TrainATConfig, make_config
from dmat_core.robust.train import train_at

DEVICE = os.environ.get("DMAT_SMOKE_DEVICE", "cpu")
CUDA = DEVICE.startswith("cuda")
AMP = os.environ.get("DMAT_SMOKE_AMP", "bf16" if CUDA else "off")
CHANNELS_LAST = os.environ.get("DMAT_SMOKE_CHANNELS_LAST", "1" if CUDA else "0") == "1"
FULL_BATCH = os.environ.get("DMAT_SMOKE_FULL_BATCH", "0") == "1"
N_TRAIN_PER_BATCH, N_TEST, N_GENERATED = 10_000, 10_000, 20_000
# parameters of the full-size models (PRESET_NOTES: U-Nets of 7.0M and 57.6M)
PARAMS = {"preact-resnet18": 11_172_170, "wrn-28-10": 36_479_194, "small": 7_000_899, "large": 57_644_803}


def batch(full: int, cut: int) -> int:
    return full if FULL_BATCH else cut


def timed(label: str):
    """A context that prints how long its block took (visible with -s; gpu_check.sh keeps it)."""
    class _T:
        def __enter__(self):
            self.t0 = time.perf_counter()
            return self

        def __exit__(self, *exc):
            self.seconds = time.perf_counter() - self.t0
            print(f"[full-path] {label}: {self.seconds:.1f} s on {DEVICE} (amp {AMP}, channels_last {CHANNELS_LAST})")
    return _T()


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module", autouse=True)
def _device():
    if CUDA and not torch.cuda.is_available():
        pytest.fail(f"DMAT_SMOKE_DEVICE={DEVICE} but CUDA is not available here", pytrace=False)
    if AMP not in ("off", "bf16"):
        pytest.fail(f"DMAT_SMOKE_AMP must be off or bf16, got {AMP!r}", pytrace=False)


def write_full_size_cifar10(root: Path, seed: int = 0) -> Path:
    """CIFAR-10's python format at its full size: data_batch_1..5 of 10,000 images, test_batch of
    10,000, batches.meta; random uint8 images, written by the format writer of `write_tiny_cifar`
    (`_batch_pickle`) without its class-dependent images, which cost 6x the time to draw (117 s
    against 21 s here) and give a 2-step run nothing it needs."""
    spec, rng = CIFAR["cifar10"], np.random.default_rng(seed)
    folder = root / spec["folder"]
    for member in spec["train"] + spec["test"]:
        n = N_TEST if member in spec["test"] else N_TRAIN_PER_BATCH
        images, labels = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)
        atomic_write_bytes(folder / member, _batch_pickle(images, labels, spec["label_key"], member))
    meta = {b"label_names": [f"class_{i}".encode() for i in range(10)],
            b"num_cases_per_batch": N_TRAIN_PER_BATCH, b"num_vis": 3072}
    atomic_write_bytes(folder / spec["meta"], pickle.dumps(meta, protocol=2))
    return folder


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A full-size CIFAR-10 archive (python format) and a generated set of the paper's format."""
    root = tmp_path_factory.mktemp("cifar-full")
    with timed("write the full-size archive and the generated set"):
        write_full_size_cifar10(root)
        x, y = load_cifar(root, train=True)
        assert x.shape == (5 * N_TRAIN_PER_BATCH, 32, 32, 3) and len(load_cifar(root, train=False)[1]) == N_TEST
        rng = np.random.default_rng(1)
        save_generated(root / "generated.npz", rng.integers(0, 256, (N_GENERATED, 32, 32, 3), dtype=np.uint8),
                       rng.integers(0, 10, N_GENERATED))
    return root


def at_config(preset, archive, out, **cut):
    return make_config(preset, data_dir=str(archive), generated=str(archive / "generated.npz"), out_dir=str(out),
                       device=DEVICE, amp=AMP, channels_last=CHANNELS_LAST, progress=False, **cut)


def check_at_run(result, cfg, arch_prefix, params):
    """What every train-at smoke checks: the steps ran on the full data, the files are there."""
    B = cfg.batch_size
    assert result["steps"] == cfg.steps and result["arch"].startswith(arch_prefix)
    # the paper's epoch with generated data: the 50,000 real images, whatever the held-out split
    assert result["num_batches"] == math.ceil(5 * N_TRAIN_PER_BATCH / B)
    assert result["amp"] == {"off": "off", "bf16": "bfloat16"}[AMP] and result["device"].startswith(DEVICE.split(":")[0])
    assert 0.0 <= result["last_val"]["val_robust_acc"] <= result["last_val"]["val_clean_acc"] <= 1.0
    out = cfg.out_dir
    for name in ("checkpoint.pt", "best.pt", "final.pt", "log.csv", "val.csv", "result.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    ck = torch.load(os.path.join(out, "final.pt"), map_location="cpu", weights_only=True)
    assert sum(v.numel() for k, v in ck["model_state_dict"].items()
               if v.is_floating_point() and "running" not in k) == params
    rows = open(os.path.join(out, "log.csv")).read().splitlines()
    assert len(rows) >= 2 and rows[-1].split(",")[0] == str(cfg.steps)     # the last step is logged
    assert all(math.isfinite(float(v)) for v in rows[-1].split(",")[1:] if v)


# ----------------------------------------------------------------------------- (a) train-at

@pytest.fixture(scope="module")
def at_small(archive, tmp_path_factory):
    """`dmat train-at --preset colab-small`, 2 steps, the CLI as a user types it."""
    out = tmp_path_factory.mktemp("at-small") / "run"
    B = batch(PRESETS["colab-small"]["batch_size"], 4)
    argv = ["train-at", "--preset", "colab-small", "--data-dir", str(archive), "--generated",
            str(archive / "generated.npz"), "--out", str(out), "--steps", "2", "--batch-size", str(B),
            "--n-val", "2", "--val-every", "2", "--device", DEVICE, "--amp", AMP, "--no-progress",
            "--set", f"channels_last={'true' if CHANNELS_LAST else 'false'}"]
    with timed("(a) train-at colab-small, 2 steps") as t:
        assert dmat(argv) == 0
    cfg = TrainATConfig.from_dict(json.loads((out / "config.json").read_text()))
    return cfg, json.loads((out / "result.json").read_text()), t.seconds


def test_train_at_colab_small_full_path(at_small):
    cfg, result, _ = at_small
    preset = PRESETS["colab-small"]
    assert cfg.arch == "preact-resnet18" and cfg.unsup_fraction == 0.7 and cfg.method == "trades"
    assert (cfg.attack_steps, cfg.val_steps, cfg.epochs, cfg.lr) == (10, 40, preset["epochs"], preset["lr"])
    check_at_run(result, cfg, "PreActResNet18", PARAMS["preact-resnet18"])


@pytest.mark.slow
def test_train_at_wrn28_10_full_path(archive, tmp_path):
    cfg = at_config("paper-wrn28-10", archive, tmp_path / "run", steps=1,
                    batch_size=batch(PRESETS["paper-wrn28-10"]["batch_size"], 2), n_val=2, val_every=1)
    assert cfg.arch == "wrn-28-10" and cfg.unsup_fraction == 0.7 and cfg.epochs == 400
    with timed("(a) train-at paper-wrn28-10, 1 step"):
        result = train_at(cfg)
    check_at_run(result, cfg, "WideResNet(depth=28, width=10", PARAMS["wrn-28-10"])


# ----------------------------------------------------------------------------- (d) eval

def eval_folder(archive, checkpoint, root, n):
    """A CIFAR-10 test split of the first n test images of the archive, each labelled with the
    classifier's own prediction: every point is then classified correctly, so each attack of
    AutoAttack's standard sequence runs (a 2-step model would otherwise leave few points to attack)."""
    from dmat_core.images.data import to_tensor_images
    from dmat_core.robust.evaluate import load_trained_classifier
    x, _ = load_cifar(archive, train=False)
    x = x[:n]
    model, _ = load_trained_classifier(checkpoint)
    with torch.no_grad():
        pred = model.to(DEVICE)(to_tensor_images(x, DEVICE)).argmax(1).tolist()
    folder = root / CIFAR["cifar10"]["folder"]
    folder.mkdir(parents=True)
    data = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(n, 3072)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": pred}, protocol=2))
    (folder / "batches.meta").write_bytes((archive / CIFAR["cifar10"]["folder"] / "batches.meta").read_bytes())
    return root


def run_eval(at_small, tmp_path, n, *extra):
    cfg, _, _ = at_small
    ck = os.path.join(cfg.out_dir, "final.pt")
    data = eval_folder(Path(cfg.data_dir), ck, tmp_path / "eval-data", n)
    out = tmp_path / "eval.json"
    argv = ["eval", "--checkpoint", ck, "--data-dir", str(data), "--n", str(n), "--attacks",
            "clean,pgd,autoattack", "--aa-version", "standard", "--device", DEVICE, "--out", str(out), *extra]
    assert dmat(argv) == 0
    r = json.loads(out.read_text())
    aa = r["autoattack"]
    # every point right (on a GPU a near tie may round the other way between two batchings)
    assert r["n"] == n and r["clean"]["accuracy"] == aa["clean_accuracy"] >= (0.5 if CUDA else 1.0)
    assert aa["version"] == "standard" and aa["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert list(aa["breakdown"]) == aa["attacks"]
    acc = list(aa["breakdown"].values())
    assert all(a >= b for a, b in zip(acc, acc[1:])) and aa["robust_accuracy"] == acc[-1]
    assert r["model"]["arch"].startswith("PreActResNet18") and r["model"]["format"] == "dmat-at-weights/1"
    return r


def test_eval_standard_autoattack_shortened(at_small, tmp_path):
    with timed("(d) eval, standard AutoAttack shortened, 2 points"):
        r = run_eval(at_small, tmp_path, 2, "--aa-n-iter", "2", "--aa-n-queries", "10", "--pgd-steps", "5")
    assert r["autoattack"]["shortened"] is True


@pytest.mark.slow
@pytest.mark.skipif(not CUDA, reason="standard AutoAttack at full length runs ~2,000 forward-backward passes and "
                    "5,000 Square queries per point: 10 to 45 min on this CPU; bench/gpu_check.sh runs it on a GPU")
def test_eval_standard_autoattack_full_length(at_small, tmp_path):
    with timed("(d) eval, standard AutoAttack at full length, 2 points"):
        r = run_eval(at_small, tmp_path, 2)
    assert r["autoattack"]["shortened"] is False


# ----------------------------------------------------------------------------- (b) train-dm, (c) generate

def dm_config(preset, archive, out, B):
    return make_dm_config(preset, data_dir=str(archive), out_dir=str(out), steps=1, batch_size=B,
                          sample_per_class=1, sample_steps=2, device=DEVICE, amp=AMP,
                          channels_last=CHANNELS_LAST, progress=False)


def check_dm_run(result, cfg, size, params):
    from dmat_core.images.unet import load_image_denoiser
    assert result["steps"] == 1 and result["arch"]["size"] == size and result["arch"]["img_resolution"] == 32
    assert result["epochs"] == pytest.approx(1 / (5 * N_TRAIN_PER_BATCH // cfg.batch_size))
    assert result["amp"] == AMP
    for name in ("checkpoint.pt", "denoiser.pt", "log.csv", "result.json", "samples/step_000001.png"):
        assert os.path.isfile(os.path.join(cfg.out_dir, name)), name
    D, arch = load_image_denoiser(os.path.join(cfg.out_dir, "checkpoint.pt"), arch=size)
    assert n_params(D) == params and arch["num_classes"] == 10


def generate_from(cfg, tmp_path, steps, size):
    out, merged = tmp_path / "gen", tmp_path / "gen.npz"
    argv = ["generate", "--checkpoint", os.path.join(cfg.out_dir, "checkpoint.pt"), "--out", str(out),
            "--num-images", "2", "--sampler", "heun", "--steps", str(steps), "--size", size,
            "--merge", str(merged), "--device", DEVICE, "--amp", AMP, "--no-progress"]
    assert dmat(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sampler"] == "heun" and manifest["steps"] == steps and manifest["nfe_per_image"] == 2 * steps - 1
    assert manifest["shard_size"] == 10_000 and manifest["sampler_kwargs"] == {} and manifest["arch"]["size"] == size
    x, y = load_generated(merged)
    assert x.shape == (2, 32, 32, 3) and x.dtype == np.uint8 and list(y) == [0, 1]
    return x


@pytest.fixture(scope="module")
def dm_small(archive, tmp_path_factory):
    cfg = dm_config("colab-small", archive, tmp_path_factory.mktemp("dm-small") / "run",
                    batch(DM_PRESETS["colab-small"]["batch_size"], 2))
    with timed("(b) train-dm colab-small, 1 step") as t:
        result = train_dm(cfg)
    return cfg, result, t.seconds


def test_train_dm_colab_small_full_path(dm_small):
    cfg, result, _ = dm_small
    assert cfg.size == "small" and cfg.lr == DM_PRESETS["colab-small"]["lr"] and cfg.at_variant == "standard"
    check_dm_run(result, cfg, "small", PARAMS["small"])


def test_generate_heun_from_colab_small(dm_small, tmp_path):
    cfg, _, _ = dm_small
    with timed("(c) generate Heun-2 from colab-small, 2 images"):
        generate_from(cfg, tmp_path, 2, "small")


@pytest.mark.slow
def test_train_dm_paper_full_path_and_generate_heun_20(archive, tmp_path):
    cfg = dm_config("paper", archive, tmp_path / "run", batch(DM_PRESETS["paper"]["batch_size"], 2))
    assert (cfg.size, cfg.at_variant, cfg.noise_p, cfg.lam) == ("large", "adversarial", 0.9, 0.3)
    with timed("(b) train-dm paper, 1 step"):
        result = train_dm(cfg)
    check_dm_run(result, cfg, "large", PARAMS["large"])
    assert result["noisy_images"] == pytest.approx(0.9 * 5 * N_TRAIN_PER_BATCH, rel=0.02)
    with timed("(c) generate Heun-20 from paper, 2 images"):
        generate_from(cfg, tmp_path, 20, "large")
