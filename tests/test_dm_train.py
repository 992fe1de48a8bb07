"""`dmat train-dm`: the image DM trainer learns, its AT loss keeps its box and its exact zeros on
images, a killed run resumes bitwise, two DDP processes match one, and bad input is refused."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dmat_core.cli import main as cli
from dmat_core.common.checkpoint import load_checkpoint
from dmat_core.common.training import RunMismatchError
from dmat_core.diffusion.losses import VARIANTS, ATConfig, equivariance_loss, fgsm_perturbation
from dmat_core.images.cifar import write_tiny_cifar
from dmat_core.images.dm_config import make_dm_config
from dmat_core.images.dm_train import DMTrainer, image_dm_loss, train_dm
from dmat_core.images.pixels import corrupt_images
from dmat_core.images.unet import build_image_denoiser, load_image_denoiser

f64 = torch.float64


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_tiny_cifar(root, n_train_per_batch=20, n_test=10, seed=0)    # 100 training images
    return root


def _cfg(tiny_dir, out, **kw):
    base = dict(data_dir=str(tiny_dir), out_dir=str(out), progress=False, batch_size=8, steps=12,
                checkpoint_every=4, log_every=1, sample_per_class=2, sample_steps=3)
    return make_dm_config("cpu-quick", **{**base, **kw})


def _states_equal(a, b):
    assert a["step"] == b["step"]
    for part in ("model", "ema"):
        sa, sb = (a[part], b[part]) if part == "model" else (a[part]["module"], b[part]["module"])
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), part
    oa, ob = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])


# ----------------------------------------------------------------------------- learning
def test_tiny_unet_loss_falls(tiny_dir, tmp_path):
    """60 steps on the tiny archive (class colours + stripes): the mean loss of the last 10 steps
    is well below that of the first 10 (fixed seed; measured 0.87 -> 0.58)."""
    torch.set_num_threads(1)
    cfg = _cfg(tiny_dir, tmp_path, steps=60, batch_size=16, lr=5e-3, checkpoint_every=60)
    losses = np.array([s["loss"] for s in DMTrainer(cfg).run()])
    first, last = losses[:10].mean(), losses[-10:].mean()
    print(f"loss {first:.3f} -> {last:.3f}")
    assert last < 0.8 * first


def test_corruption_is_fixed_and_exact(tiny_dir):
    x = torch.zeros(200, 3, 4, 4)
    a, mask = corrupt_images(x, 0.9, 0.4, torch.Generator().manual_seed(0))
    b, mask_b = corrupt_images(x, 0.9, 0.4, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and torch.equal(mask, mask_b) and int(mask.sum()) == 180
    assert torch.equal(a[~mask], x[~mask])
    assert abs(float(a[mask].std()) - 0.4) < 0.02                       # std 2 s for s = 0.2


# ----------------------------------------------------------------------------- AT on images
def test_at_budget_box_and_image_floor():
    """w stays in its box; sigma r(sigma) >= 16/255 (8/255 of [0, 1]) in [-1, 1] model units."""
    cfg = make_dm_config("cpu-quick", at_variant="adversarial").at_config()
    sigma = torch.exp(torch.linspace(-7, 5, 200, dtype=f64))
    assert float((sigma * cfg.budget(sigma, 0.5)).min()) >= 16 / 255 - 1e-12
    torch.manual_seed(0)
    D = build_image_denoiser("tiny")
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(6, 3, 32, 32, generator=g) * 2 - 1
    s = torch.tensor([0.01, 0.1, 0.5, 1.0, 5.0, 50.0])
    labels = torch.arange(6)
    x = x0 + s[:, None, None, None] * torch.randn(x0.shape, generator=g)
    eps = (x - D(x, s, labels)) / s[:, None, None, None]
    r = cfg.budget(s, 0.5).float()
    w = fgsm_perturbation(lambda v, t: D(v, t, labels), x, s, eps, r, generator=g)
    assert w.shape == x.shape
    assert bool((w.abs().flatten(1).max(1).values <= r * (1 + 1e-6)).all())


def test_equivariance_is_exact_off_the_range_of_a_linear_denoiser():
    """D(x) = per-channel spatial mean of x (a projection P): a perturbation with zero mean per
    channel is in the null space of P, so eps(x + sigma w) = eps(x) + w exactly on images; a
    constant perturbation is not (D follows it: invariance holds there instead)."""
    def D(x, sigma, labels=None):
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8, dtype=f64, generator=g)
    sigma = torch.tensor([0.1, 0.5, 1.0, 3.0], dtype=f64)
    eps = (x - D(x, sigma)) / sigma[:, None, None, None]
    w = torch.randn(4, 3, 8, 8, dtype=f64, generator=g)
    w_null = w - w.mean(dim=(2, 3), keepdim=True)
    assert float(equivariance_loss(D, x, sigma, eps, w_null, 0.5)) < 1e-25
    assert float(equivariance_loss(D, x, sigma, eps, w - w_null, 0.5)) > 1e-2
    assert float(equivariance_loss(D, x, sigma, eps, w - w_null, 0.5, invariance=True)) < 1e-25
    assert float(equivariance_loss(D, x, sigma, eps, w_null, 0.5, invariance=True)) > 1e-2


def test_every_variant_on_images_with_labels():
    """A point mass per class (D = the class's image, whatever x) is the exact denoiser of its data:
    both terms vanish for every variant but invariance, which only a labels-blind D would pass."""
    g = torch.Generator().manual_seed(0)
    means = torch.randn(10, 3, 8, 8, dtype=f64, generator=g)
    labels = torch.tensor([0, 3, 3, 9, 1, 4])

    def D(x, sigma, labels):
        return means[labels]
    sigma = torch.exp(torch.randn(6, dtype=f64, generator=g) * 1.2 - 1.2)
    noise = torch.randn(6, 3, 8, 8, dtype=f64, generator=g)
    for variant in VARIANTS:
        loss, parts = image_dm_loss(D, means[labels], labels, ATConfig(variant, r_min=0.1255), sigma, noise, g)
        assert float(parts["loss_dsm"]) < 1e-25
        assert (float(parts["loss_at"]) > 1e-3) if variant == "invariance" else float(parts["loss_at"]) < 1e-25
    # the tiny U-Net: every variant gives a finite loss and a gradient
    torch.manual_seed(0)
    U = build_image_denoiser("tiny")
    x0 = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    for variant in VARIANTS:
        U.zero_grad()
        loss, parts = image_dm_loss(U, x0, labels[:4], ATConfig(variant), sigma[:4].float(),
                                    noise[:4].float().repeat(1, 1, 4, 4), g)
        loss.backward()
        assert torch.isfinite(loss) and U.net.out_conv.weight.grad.abs().sum() > 0
        assert (float(parts["loss_at"]) == 0) == (variant == "standard")


# ----------------------------------------------------------------------------- resume
def _whole_and_cut(tiny_dir, tmp_path, **kw):
    """Train to the end in ``whole``; in ``cut`` abandon the run after step 6 (its last checkpoint
    is step 4) and start it again, to the end. Returns both final checkpoints."""
    for _ in DMTrainer(_cfg(tiny_dir, tmp_path / "whole", **kw)).run():
        pass
    run = DMTrainer(_cfg(tiny_dir, tmp_path / "cut", **kw)).run()
    for state in run:
        if state["step"] == 6:
            break
    run.close()
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 4
    resumed = DMTrainer(_cfg(tiny_dir, tmp_path / "cut", **kw))
    assert resumed.step_count == 4
    for _ in resumed.run():
        pass
    return tuple(load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("whole", "cut"))


def test_interrupted_run_resumes_bitwise(tiny_dir, tmp_path):
    """Adversarial AT, dropout, flips and 50% noisy data: a run abandoned after step 6 (checkpoint
    at 4) and restarted ends bitwise equal to an uninterrupted one: weights, EMA, Adam, log, samples."""
    torch.set_num_threads(1)
    kw = dict(at_variant="adversarial", noise_p=0.5, noise_std=0.2, unet={"dropout": 0.1})
    a, b = _whole_and_cut(tiny_dir, tmp_path, **kw)
    _states_equal(a, b)
    for name in ("log.csv", "samples/step_000004.png", "samples/step_000012.png"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes(), name
    assert len((tmp_path / "cut" / "log.csv").read_text().splitlines()) == 13
    # the EMA weights are what load_image_denoiser gives, from either file
    D, arch = load_image_denoiser(tmp_path / "cut" / "denoiser.pt")
    assert arch["dropout"] == 0.1 and all(torch.equal(v, a["ema"]["module"][k]) for k, v in D.state_dict().items())
    # an out_dir of another run is refused, naming the setting; --fresh starts over
    with pytest.raises(RunMismatchError, match=r"lam: 0.3 there, 0.5 now"):
        DMTrainer(_cfg(tiny_dir, tmp_path / "cut", **kw, lam=0.5))
    fresh = DMTrainer(_cfg(tiny_dir, tmp_path / "cut", **kw, lam=0.5), fresh=True)
    assert fresh.step_count == 0 and not (tmp_path / "cut" / "samples").exists()


def test_bf16_channels_last_resume_bitwise(tiny_dir, tmp_path):
    """The GPU settings (bf16 autocast, channels-last) run on the CPU: a run abandoned after step 6
    resumes to the uninterrupted run's state, and autocast really ran (the weights differ from fp32)."""
    torch.set_num_threads(1)
    kw = dict(at_variant="adversarial", amp="bf16", channels_last=True, steps=8)
    trainer = DMTrainer(_cfg(tiny_dir, tmp_path / "settings", **kw))
    assert trainer.amp_dtype == torch.bfloat16 and trainer.channels_last
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in trainer.model.parameters() if p.dim() == 4)
    a, b = _whole_and_cut(tiny_dir, tmp_path, **kw)
    _states_equal(a, b)
    head, *rows = (tmp_path / "cut" / "log.csv").read_text().splitlines()
    loss = [float(r.split(",")[head.split(",").index("loss")]) for r in rows]
    assert len(loss) == 8 and np.isfinite(loss).all()
    for _ in DMTrainer(_cfg(tiny_dir, tmp_path / "fp32", **{**kw, "amp": "off"})).run():
        pass
    c = load_checkpoint(tmp_path / "fp32" / "checkpoint.pt")
    assert any(not torch.equal(v, c["model"][k]) for k, v in a["model"].items() if v.is_floating_point())


def _cli(args, **popen):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "dmat_core", "train-dm", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.slow  # three CLI launches
def test_killed_cli_run_resumes_bitwise(tiny_dir, tmp_path):
    args = ["--preset", "cpu-quick", "--data-dir", str(tiny_dir), "--steps", "40", "--checkpoint-every", "10",
            "--at-variant", "random", "--noise-p", "0.9", "--noise-std", "0.1", "--no-progress"]
    assert _cli([*args, "--out", str(tmp_path / "whole")]).wait(timeout=300) == 0
    proc = _cli([*args, "--out", str(tmp_path / "killed")], start_new_session=True)
    while not (tmp_path / "killed" / "checkpoint.pt").exists() and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(0.5)                                       # into the steps after the checkpoint
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["step"] < 40
    proc = _cli([*args, "--out", str(tmp_path / "killed")])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("whole", "killed"))
    _states_equal(a, b)
    assert (tmp_path / "whole" / "log.csv").read_bytes() == (tmp_path / "killed" / "log.csv").read_bytes()


# ----------------------------------------------------------------------------- DDP
def test_two_processes_match_one(tiny_dir, tmp_path):
    """torchrun, 2 gloo processes, each its half of every global batch (sigma and noise drawn for
    the global batch): the same weights as one process up to float summation order."""
    cfg = _cfg(tiny_dir, tmp_path / "one", steps=6, checkpoint_every=3, seed=3)
    two = dict(cfg.to_dict(), out_dir=str(tmp_path / "two"))
    (tmp_path / "two.json").write_text(json.dumps(two))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "dmat_core", "train-dm", "--config", str(tmp_path / "two.json")],
                          env=env, capture_output=True, text=True, timeout=300)
    print(f"torchrun: {time.perf_counter() - t0:.1f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    train_dm(cfg)
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("one", "two"))
    assert a["step"] == b["step"] == 6 and b["world_size"] == 2
    for sa, sb in ((a["model"], b["model"]), (a["ema"]["module"], b["ema"]["module"])):
        worst = max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)
        print(f"largest difference {worst:.2e}")
        assert worst < 1e-5
    rows_a, rows_b = ((tmp_path / d / "log.csv").read_text().splitlines() for d in ("one", "two"))
    col = rows_a[0].split(",").index("loss")
    assert len(rows_a) == len(rows_b) == 7
    for ra, rb in zip(rows_a[1:], rows_b[1:]):
        assert abs(float(ra.split(",")[col]) - float(rb.split(",")[col])) < 1e-4


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("flags,message", [
    (["--noise-p", "1.5"], "noise_p=1.5: noise_p must be a number in [0, 1]"),
    (["--lam", "-1"], "lam=-1.0: lam must be a number >= 0"),
    (["--at-variant", "fgsm"], 'at_variant="fgsm": at_variant must be one of "standard", "random"'),
    (["--set", "size=huge"], 'size="huge": size must be one of "tiny", "small", "large"'),
    (["--noise-std", "-0.1"], "noise_std=-0.1"),
    (["--batch", "0"], "batch_size=0: batch_size must be an integer >= 1"),
    (["--batch-size", "-2"], "batch_size=-2: batch_size must be an integer >= 1"),
    (["--device", "tpu"], "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["--set", "lam"], "--set expects key=value, got 'lam'"),
    (["--set", "=0.5"], "--set expects key=value, got '=0.5'"),
    (["--set", "unet={\"width\": 3}"], "unknown setting 'unet.width'; known in unet: model_channels"),
    (["--set", "unet={\"channel_mult\": \"1,2\"}"], 'unet.channel_mult="1,2": must be a valid list'),
    (["--set", "flip=False"], 'flip="False": flip must be true or false'),
    (["--set", "grad_clip=0"], "grad_clip=0: grad_clip must be null or a number > 0"),
])
def test_cli_refuses_bad_input(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        cli.main(["train-dm", "--preset", "cpu-quick", "--out", str(out), *flags])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_out_dir_of_another_kind_is_refused(tiny_dir, tmp_path):
    from dmat_core.common.checkpoint import atomic_save
    atomic_save({"format": "dmat-at-train/1", "step": 3}, tmp_path / "checkpoint.pt")
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(RunMismatchError, match="not a dmat train-dm checkpoint"):
        DMTrainer(_cfg(tiny_dir, tmp_path))
    assert (tmp_path / "checkpoint.pt").read_bytes() == before and not (tmp_path / "config.json").exists()
