"""DistributedDataParallel: 2 CPU processes (gloo, launched by torchrun) = 1 process.

Each rank trains on its slice of every global batch and DDP averages the gradients, so with
the same global batch the two runs differ only by the order of float summations. Two things
would make them differ for real, and are excluded here: BatchNorm statistics (per rank on
CPU, where SyncBatchNorm is unavailable: the model has no BN) and the attack's random start
(each rank draws its own: the attack starts at x). The augmentation is drawn for the global
batch, so it is the same in both runs.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dmat_core.common.checkpoint import load_checkpoint
from dmat_core.images import data
from dmat_core.robust.config import TrainATConfig
from dmat_core.robust.train import train_at

TOL = 1e-5  # float32 summation order (per-rank means then an average, vs one mean)


def tiny_data(tmp_path):
    data.write_tiny_cifar(tmp_path / "cifar", n_train_per_batch=40, n_test=10, seed=0)
    gx, gy = data.load_cifar(data.write_tiny_cifar(tmp_path / "gen-src", n_train_per_batch=24, seed=7))
    data.save_generated(tmp_path / "gen.npz", gx, gy)


def torchrun(config_file, **popen):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dmat_core", "train-at", "--config", str(config_file)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


def test_two_processes_match_one(tmp_path):
    tiny_data(tmp_path)
    cfg = dict(data_dir=str(tmp_path / "cifar"), generated=str(tmp_path / "gen.npz"), unsup_fraction=0.5,
               arch="small-cnn", arch_kw={"width": 8}, batchnorm=False, method="pgd", attack_init="none",
               label_smoothing=0.1, batch_size=32, lr=0.05, steps=6, n_val=40, attack_steps=3,
               val_steps=2, val_every=3, checkpoint_every=3, log_every=1, schedule_unit="step",
               amp="off", progress=False, seed=1)
    one = TrainATConfig.from_dict({**cfg, "out_dir": str(tmp_path / "one")})
    two = TrainATConfig.from_dict({**cfg, "out_dir": str(tmp_path / "two")})
    two.save(tmp_path / "two.json")

    t0 = time.perf_counter()
    proc = torchrun(tmp_path / "two.json")
    _, err = proc.communicate(timeout=240)
    print(f"torchrun: {time.perf_counter() - t0:.1f} s")
    assert proc.returncode == 0, err[-3000:]
    result = train_at(one)

    a, b = load_checkpoint(tmp_path / "one" / "checkpoint.pt"), load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert a["step"] == b["step"] == 6 and b["world_size"] == 2 and result["world_size"] == 1
    for part in ("model", "ema"):
        sa = a[part] if part == "model" else a[part]["module"]
        sb = b[part] if part == "model" else b[part]["module"]
        worst = max((sb[k].double() - sa[k].double()).abs().max().item() for k in sa)
        print(f"{part}: largest difference {worst:.2e}")
        assert worst <= TOL
    # the losses logged by rank 0 are the averages over both ranks: the same as one process
    rows_a = (tmp_path / "one" / "log.csv").read_text().splitlines()
    rows_b = (tmp_path / "two" / "log.csv").read_text().splitlines()
    col = rows_a[0].split(",").index("loss")
    for ra, rb in zip(rows_a[1:], rows_b[1:]):
        assert abs(float(ra.split(",")[col]) - float(rb.split(",")[col])) < 1e-4


@pytest.mark.slow  # three torchrun launches: 17 s on a quiet 2-core machine, 36 s under load
def test_killed_ddp_run_resumes_bitwise(tmp_path):
    """TRADES with per-rank BN and random starts under torchrun: SIGKILL the whole job after its
    first checkpoint, start it again, and it ends bitwise equal to an uninterrupted DDP run."""
    tiny_data(tmp_path)
    cfg = dict(data_dir=str(tmp_path / "cifar"), generated=str(tmp_path / "gen.npz"), unsup_fraction=0.5,
               arch="small-cnn", arch_kw={"width": 8}, batch_size=32, lr=0.05, steps=6, n_val=40,
               attack_steps=2, val_steps=2, val_every=3, checkpoint_every=3, schedule_unit="step",
               amp="off", progress=False, seed=2)
    for name in ("whole", "killed"):
        (tmp_path / f"{name}.json").write_text(json.dumps({**cfg, "out_dir": str(tmp_path / name)}))
    assert torchrun(tmp_path / "whole.json").wait(timeout=240) == 0
    proc = torchrun(tmp_path / "killed.json", start_new_session=True)
    while not (tmp_path / "killed" / "checkpoint.pt").exists() and proc.poll() is None:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["step"] < 6
    assert torchrun(tmp_path / "killed.json").wait(timeout=240) == 0
    a, b = load_checkpoint(tmp_path / "whole" / "checkpoint.pt"), load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert a["step"] == b["step"] == 6
    for sa, sb in ((a["model"], b["model"]), (a["ema"]["module"], b["ema"]["module"])):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
