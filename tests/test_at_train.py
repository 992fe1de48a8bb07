"""Adversarial training: exact resume after a kill, the schedule and EMA rules, clear errors.

Everything runs on the tiny synthetic CIFAR archive and a tiny generated set written here.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dmat_core.common.checkpoint import load_checkpoint
from dmat_core.common.train_utils import EMA, one_cycle_cosine, param_groups
from dmat_core.images import data
from dmat_core.robust.config import PRESETS, TrainATConfig, make_config
from dmat_core.robust.evaluate import load_trained_classifier
from dmat_core.robust.train import ATTrainer, NonFiniteLossError, finished_result, train_at

N_STEPS = 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny CIFAR-10 archive (200 train / 50 test images) and 120 "generated" images."""
    root = tmp_path_factory.mktemp("at")
    data.write_tiny_cifar(root / "cifar", n_train_per_batch=40, n_test=50, seed=0)
    gx, gy = data.load_cifar(data.write_tiny_cifar(root / "gen-src", n_train_per_batch=24, seed=7))
    data.save_generated(root / "gen.npz", gx, gy)
    return root


def small_config(tiny, out, **kw):
    """SmallCNN, half generated batches, 2-step TRADES attack: a step takes a few ms."""
    base = dict(data_dir=str(tiny / "cifar"), generated=str(tiny / "gen.npz"), unsup_fraction=0.5,
                out_dir=str(out), arch="small-cnn", arch_kw={"width": 8}, batch_size=32, lr=0.05,
                steps=N_STEPS, n_val=40, attack_steps=2, val_steps=3, val_every=4, checkpoint_every=4,
                log_every=2, schedule_unit="step", amp="off", progress=False, seed=3)
    base.update(kw)
    return TrainATConfig.from_dict(base)


def tensors(trainer_or_ck):
    """Every tensor of the state that must survive a resume: model, EMA, optimiser buffers."""
    ck = trainer_or_ck.state_dict() if isinstance(trainer_or_ck, ATTrainer) else trainer_or_ck
    out = {f"model.{k}": v for k, v in ck["model"].items()}
    out.update({f"ema.{k}": v for k, v in ck["ema"]["module"].items()})
    for i, s in ck["optimizer"]["state"].items():
        out.update({f"opt.{i}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
    return out


def assert_same_state(a, b):
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"not bitwise equal: {different[:5]}"


def csv_rows(path, drop=("images_per_s",)):
    lines = path.read_text().splitlines()
    head = lines[0].split(",")
    keep = [i for i, h in enumerate(head) if h not in drop]
    return [[row.split(",")[i] for i in keep] for row in lines]


@pytest.fixture(scope="module")
def reference(tiny):
    """The uninterrupted run."""
    cfg = small_config(tiny, tiny / "runs" / "reference")
    train_at(cfg)
    return cfg


def test_generator_stopped_midway_resumes_bitwise(tiny, reference):
    cfg = small_config(tiny, tiny / "runs" / "stopped")
    run = ATTrainer(cfg).run()
    for state in run:  # stop after step 6: the last checkpoint is at step 4
        if state["step"] == 6:
            break
    run.close()
    assert load_checkpoint(tiny / "runs" / "stopped" / "checkpoint.pt")["step"] == 4
    resumed = ATTrainer(cfg)
    assert resumed.step_count == 4
    for _ in resumed.run():
        pass
    final = load_checkpoint(tiny / "runs" / "reference" / "checkpoint.pt")
    assert resumed.step_count == final["step"] == N_STEPS
    assert_same_state(resumed, final)
    ref, out = tiny / "runs" / "reference", tiny / "runs" / "stopped"
    for name in ("log.csv", "val.csv"):  # the logs hold each step once, with the same values
        assert csv_rows(out / name) == csv_rows(ref / name)
    best_a, best_b = load_checkpoint(ref / "best.pt"), load_checkpoint(out / "best.pt")
    assert best_a["step"] == best_b["step"]
    assert all(torch.equal(v, best_b["model_state_dict"][k]) for k, v in best_a["model_state_dict"].items())


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_resume_bitwise(tiny, reference, amp):
    """The GPU settings, run on the CPU (its autocast has bf16 and fp16, GradScaler works there):
    channels-last weights and batches, autocast, fp16's loss scaling and its attack view. A run
    stopped after step 6 resumes to the uninterrupted run's state, scaler included, and autocast
    really ran: the weights differ from the fp32 reference's."""
    kw = dict(amp=amp, channels_last=True)
    whole = ATTrainer(small_config(tiny, tiny / "runs" / f"{amp}-whole", **kw), fresh=True)
    assert whole.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    assert whole.scaler.is_enabled() == (amp == "fp16") and whole.channels_last
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in whole.model.parameters() if p.dim() == 4)
    for _ in whole.run():
        pass
    cfg = small_config(tiny, tiny / "runs" / f"{amp}-cut", **kw)
    run = ATTrainer(cfg, fresh=True).run()
    for state in run:
        if state["step"] == 6:
            break
    run.close()
    resumed = ATTrainer(cfg)
    assert resumed.step_count == 4
    for _ in resumed.run():
        pass
    assert_same_state(resumed, whole)
    assert resumed.scaler.state_dict() == whole.scaler.state_dict()
    if amp == "fp16":  # the scale moved off its start value or was kept: either way it was used
        assert whole.scaler.get_scale() > 0 and math.isfinite(whole.scaler.get_scale())
    assert csv_rows(tiny / "runs" / f"{amp}-cut" / "log.csv") == csv_rows(tiny / "runs" / f"{amp}-whole" / "log.csv")
    fp32 = load_checkpoint(tiny / "runs" / "reference" / "checkpoint.pt")["model"]
    assert any(not torch.equal(v, fp32[k]) for k, v in whole.model.state_dict().items() if v.is_floating_point())


def test_sigkilled_process_resumes_bitwise(tiny, reference):
    out = tiny / "runs" / "killed"
    cfg = small_config(tiny, out, checkpoint_every=2)
    cfg_file = tiny / "killed.json"
    cfg.save(cfg_file)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "dmat_core", "train-at", "--config", str(cfg_file)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600                      # the first checkpoint: seconds, minutes on a loaded machine
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(out / "checkpoint.pt")["step"]
    assert proc.returncode == -signal.SIGKILL and killed_at < N_STEPS, proc.stderr.read().decode()[-2000:]
    train_at(cfg)  # the same settings, the same folder: resumes
    assert not list(out.glob(".*.tmp"))  # what a kill during a write leaves is cleaned up
    assert_same_state(load_checkpoint(out / "checkpoint.pt"),
                      load_checkpoint(tiny / "runs" / "reference" / "checkpoint.pt"))


# --------------------------------------------------------------------------- learning

def test_cpu_quick_preset_learns(tiny):
    """The cpu-quick preset: the loss falls and the EMA model beats chance, also under attack."""
    cfg = make_config("cpu-quick", data_dir=str(tiny / "quick-data"), out_dir=str(tiny / "runs" / "quick"),
                      progress=False)
    trainer = ATTrainer(cfg)
    losses = [s["loss"] for s in trainer.run()]
    result = json.loads((tiny / "runs" / "quick" / "result.json").read_text())
    assert (tiny / "quick-data" / "cifar-10-batches-py").is_dir()  # written because it was missing
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3
    assert result["last_val"]["val_clean_acc"] > 0.4 and result["last_val"]["val_robust_acc"] > 0.25
    model, info = load_trained_classifier(tiny / "runs" / "quick" / "best.pt")
    assert info["step"] == result["best"]["step"] and not model.training


def test_load_trained_classifier_reads_every_file(tiny, reference):
    out = tiny / "runs" / "reference"
    ck = load_checkpoint(out / "checkpoint.pt")
    for weights, state in (("ema", ck["ema"]["module"]), ("model", ck["model"])):
        model, info = load_trained_classifier(out / "checkpoint.pt", weights=weights)
        assert info["format"] == "dmat-at-train/1" and info["step"] == N_STEPS
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    final, info = load_trained_classifier(out / "final.pt")
    assert all(torch.equal(v, ck["ema"]["module"][k]) for k, v in final.state_dict().items())
    assert info["format"] == "dmat-at-weights/1"                 # the user's own file, not "published"
    assert load_trained_classifier(out / "best.pt")[1]["format"] == "dmat-at-weights/1"
    with pytest.raises(ValueError, match="does not match"):
        load_trained_classifier(out / "final.pt", "small-cnn", arch_kw={"width": 4})


def test_weights_files_are_labelled_by_what_they_are(tiny, reference):
    """best.pt / final.pt of train-at, also those written before the format tag, are dmat's own
    weights; a file with the weights and no config (the authors' layout) is 'published'."""
    ck = torch.load(tiny / "runs" / "reference" / "final.pt", weights_only=True)
    untagged = {k: v for k, v in ck.items() if k != "format"}
    torch.save(untagged, tiny / "untagged.pt")
    assert load_trained_classifier(tiny / "untagged.pt")[1]["format"] == "dmat-at-weights/1"
    published = {k: ck[k] for k in ("model_state_dict", "unaveraged_model_state_dict")}
    torch.save(published, tiny / "published.pt")
    model, info = load_trained_classifier(tiny / "published.pt", "small-cnn", arch_kw={"width": 8})
    assert info["format"] == "published"
    torch.save(ck["model_state_dict"], tiny / "plain.pt")
    assert load_trained_classifier(tiny / "plain.pt", "small-cnn", arch_kw={"width": 8})[1]["format"] == "state_dict"


def test_train_at_reuses_a_finished_run(tiny, reference):
    """Load if finished, else train: a finished run of the same settings is returned as it is
    (nothing trained or rewritten); other settings, or no run, are not taken for it."""
    out = tiny / "runs" / "reference"
    stamps = {f: (out / f).stat().st_mtime_ns for f in ("final.pt", "result.json", "checkpoint.pt", "log.csv")}
    assert train_at(reference, reuse=True) == json.loads((out / "result.json").read_text())
    assert {f: (out / f).stat().st_mtime_ns for f in stamps} == stamps
    assert finished_result(reference.replace(progress=True, log_every=3, device="cpu")) is not None
    assert finished_result(reference.replace(lr=0.1)) is None
    assert finished_result(small_config(tiny, tiny / "runs" / "never")) is None


def test_preset_without_generated_data_uses_the_real_epoch(tiny):
    """colab-small with unsup_fraction=0: an epoch is one pass over the real training images left
    after n_val (the paper's definition without generated data), not the 50000-image epoch of
    mixed batches; an override of None puts any preset value back to the default."""
    kw = dict(data_dir=str(tiny / "cifar"), out_dir=str(tiny / "runs" / "epoch"), arch="small-cnn",
              arch_kw={"width": 4}, batch_size=32, n_val=40, amp="off", device="cpu", progress=False)
    real = ATTrainer(make_config("colab-small", unsup_fraction=0.0, **kw), fresh=True)
    assert real.num_batches == math.ceil((200 - 40) / 32)
    mixed = ATTrainer(make_config("colab-small", generated=str(tiny / "gen.npz"), **kw), fresh=True)
    assert mixed.num_batches == math.ceil(200 / 32)              # the real set's size (CIFAR-10: 50000)
    assert make_config("colab-small", unsup_fraction=0.0, epoch_size=1000).epoch_size == 1000
    assert make_config("paper-wrn28-10", generated="g.npz", epoch_size=None).epoch_size is None
    with pytest.raises(ValueError, match="unknown setting"):
        make_config("cpu-quick", epochsize=None)


def test_none_is_a_value_where_a_setting_says_what_it_means():
    """One meaning of unset: a setting left out keeps the layer below's value; None is a value,
    allowed where the field says what it means and refused elsewhere (not "back to the default")."""
    assert make_config("cpu-quick").checkpoint_every == 8                   # the preset's
    assert make_config("cpu-quick", checkpoint_every=None).checkpoint_every is None   # None: one epoch
    assert make_config("cpu-quick", attack_step_size=None).attack_step_size is None   # the attack's default
    with pytest.raises(ValueError, match=r'amp=null: amp must be one of "auto", "bf16", "fp16", "off"'):
        make_config("cpu-quick", amp=None)


@pytest.mark.parametrize("change, message", [
    (dict(augment="False"), 'augment="False": augment must be true or false'),
    (dict(make_tiny_data="no"), 'make_tiny_data="no": make_tiny_data must be true or false'),
    (dict(beta=True), "beta=true: beta must be a number in [0, 1e+06]"),
    (dict(attack_steps=2.0), "attack_steps=2.0: attack_steps must be an integer >= 1"),
    (dict(batch_size=0), "batch_size=0: batch_size must be an integer >= 1"),
    (dict(lr=float("nan")), "lr=NaN: lr must be a number in (0, 100]"),
    (dict(arch_kw="width=8"), 'arch_kw="width=8": arch_kw must be a JSON object'),
])
def test_settings_are_strictly_typed(change, message):
    with pytest.raises(ValueError) as e:
        make_config("cpu-quick", **change)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_device_comes_from_the_config(tiny, monkeypatch):
    auto = ATTrainer(small_config(tiny, tiny / "runs" / "device", device="auto"), fresh=True)
    assert auto.device == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            ATTrainer(small_config(tiny, tiny / "runs" / "device", device="cuda"), fresh=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)   # a GPU machine, the caller chose the CPU
    cpu = ATTrainer(small_config(tiny, tiny / "runs" / "device", device="cpu", amp="auto"), fresh=True)
    assert cpu.device == torch.device("cpu") and cpu.amp_dtype is None and not cpu.channels_last
    assert next(cpu.model.parameters()).device.type == "cpu" and cpu.val_x.device.type == "cpu"
    for bad in ("gpu", "cuda:x", "cpu:0:1"):
        with pytest.raises(ValueError, match="device must be"):
            small_config(tiny, tiny / "runs" / "device", device=bad)
    assert TrainATConfig(device=torch.device("cpu"), unsup_fraction=0.0).device == "cpu"       # JSON-ready
    with pytest.raises(ValueError, match="device=null: device must be a string"):
        TrainATConfig.from_dict({"device": None, "unsup_fraction": 0.0})


def test_pgd_at_method_runs(tiny):
    cfg = small_config(tiny, tiny / "runs" / "pgd", method="pgd", attack_init="uniform", steps=2,
                       label_smoothing=0.0)
    state = ATTrainer(cfg).step()
    assert math.isfinite(state["loss"]) and "ce_adv" in state and "kl" not in state


# --------------------------------------------------------------------------- building blocks

@pytest.mark.parametrize("total,frac", [(400, 0.025), (37, 0.1), (1000, 0.025)])
def test_one_cycle_cosine_is_torch_onecycle(total, frac):
    """The schedule of the reference code: OneCycleLR (lr and momentum), here a pure function."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=total, pct_start=frac)
    for t in range(total):
        g = opt.param_groups[0]
        assert one_cycle_cosine(t, total, frac, 0.2) == pytest.approx(g["lr"], rel=1e-12, abs=1e-15)
        assert one_cycle_cosine(t, total, frac, 0.85, start=0.95, end=0.95) == pytest.approx(g["momentum"], rel=1e-12)
        opt.step()
        sched.step()


def test_ema_follows_the_reference_rule():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, tau=0.995, warmup=3)
    assert [ema.decay(t) for t in (1, 2)] == [0.0, 0.0]
    assert ema.decay(3) == pytest.approx(0.1) and ema.decay(10**6) == 0.995
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # update 1 < warmup: a copy
    assert torch.equal(ema.module.weight, model.weight) and not torch.equal(before, model.weight)
    for _ in range(3):
        ema.update(model)
    with torch.no_grad():
        target = model.weight.clone()
        model.weight.add_(1.0)
    d = ema.decay(5)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, d * target + (1 - d) * model.weight)
    clone = EMA(torch.nn.Linear(3, 2))
    clone.load_state_dict(ema.state_dict())
    assert clone.num_updates == 5 and torch.equal(clone.module.weight, ema.module.weight)


def test_no_weight_decay_on_batchnorm_and_biases():
    from dmat_core.robust.classifiers import SmallCNN
    model = SmallCNN(width=4)
    bn = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    decay, no_decay = param_groups(model, 5e-4, "bn_bias")
    assert {id(p) for p in no_decay["params"]} == bn | {id(model.logits.bias)}
    assert no_decay["weight_decay"] == 0 and decay["weight_decay"] == 5e-4
    decay, no_decay = param_groups(model, 5e-4, "bn")  # the reference code: BN only
    assert {id(p) for p in no_decay["params"]} == bn


# --------------------------------------------------------------------------- errors

def test_nan_loss_is_a_clear_error_and_writes_nothing(tiny):
    out = tiny / "runs" / "nan"
    trainer = ATTrainer(small_config(tiny, out))
    with torch.no_grad():
        trainer.model.logits.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 1"):
        next(trainer.run())
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_resume_with_another_architecture_is_refused(tiny, reference):
    cfg = small_config(tiny, reference.out_dir, arch_kw={"width": 16})
    with pytest.raises(ValueError, match="another architecture"):
        ATTrainer(cfg)
    with pytest.raises(ValueError, match="lr: 0.05 there, 0.1 now"):
        ATTrainer(small_config(tiny, reference.out_dir, lr=0.1))


@pytest.mark.parametrize("change,message", [
    (dict(eps=8), "write 8/255"),
    (dict(eps=-0.1), r"eps=-0.1: eps must be a number in \(0, 64\]"),
    (dict(generated=None), "no generated set is given"),
    (dict(method="madry"), "method must be"),
    (dict(learning_rate=0.1), "unknown setting 'learning_rate'"),
])
def test_bad_settings_are_clear_errors(tiny, change, message):
    base = small_config(tiny, tiny / "runs" / "bad").to_dict()
    with pytest.raises(ValueError, match=message):
        TrainATConfig.from_dict({**base, **change})
    assert not (tiny / "runs" / "bad").exists()


def test_bad_generated_file_is_a_clear_error(tiny):
    bad = tiny / "bad.npz"
    np.savez(bad, images=np.zeros((4, 32, 32, 3), np.uint8), label=np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="missing key"):
        ATTrainer(small_config(tiny, tiny / "runs" / "badnpz", generated=str(bad)))
    for image, label, message in [(np.zeros((4, 32, 32, 3), np.uint8), np.full(4, 10), "labels out of range"),
                                  (np.zeros((4, 32, 32, 3), np.float32), np.zeros(4, np.int64), "must be uint8"),
                                  (np.zeros((4, 3, 32, 32), np.uint8), np.zeros(4, np.int64), "NHWC")]:
        np.savez(bad, image=image, label=label)
        with pytest.raises(ValueError, match=message):
            ATTrainer(small_config(tiny, tiny / "runs" / "badnpz", generated=str(bad)))
    assert not (tiny / "runs" / "badnpz").exists()


def test_presets_are_valid():
    for name, preset in PRESETS.items():
        extra = {"generated": "g.npz"} if preset.get("unsup_fraction", 0.7) > 0 else {}
        cfg = make_config(name, **extra)
        assert cfg.batch_size % 8 == 0 or name == "cpu-quick"
    paper = make_config("paper-wrn28-10", generated="g.npz")
    assert (paper.arch, paper.arch_kw, paper.batch_size, paper.lr, paper.weight_decay) == \
        ("wrn-28-10", {"activation": "silu"}, 512, 0.2, 5e-4)
    assert (paper.beta, paper.label_smoothing, paper.attack_steps, paper.unsup_fraction) == (5.0, 0.1, 10, 0.7)
    assert paper.eps == 8 / 255 and paper.attack_step_size == 2 / 255
    assert paper.epoch_size is None    # the trainer's rule: the real set's size (50000) with generated data


def test_fp16_attack_view_changes_no_step():
    """Under fp16 the attack sees the model through _AttackView (input gradients x 256, so they do
    not underflow): a power-of-two scale leaves every sign, hence every attack step, unchanged."""
    from dmat_core.robust.classifiers import SmallCNN
    from dmat_core.robust.trades import trades_inner
    from dmat_core.robust.train import _AttackView
    torch.manual_seed(0)
    model, x = SmallCNN(width=4).train(), torch.rand(8, 3, 32, 32)
    runs = []
    for m in (model, _AttackView(model)):
        torch.manual_seed(1)
        runs.append(trades_inner(m, x, eps=8 / 255, steps=3, init="uniform", bn_mode="frozen"))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], x)


def test_schedule_per_epoch_holds_within_an_epoch(tiny):
    trainer = ATTrainer(small_config(tiny, tiny / "runs" / "sched", schedule_unit="epoch", steps=40,
                                        warmup_frac=0.5), fresh=True)
    nb = trainer.num_batches
    lrs = [trainer.schedule(t)[0] for t in range(trainer.total_steps)]
    assert lrs[0] == lrs[nb - 1] != lrs[nb] and lrs[0] == pytest.approx(0.05 / 25)


def test_run_killed_before_its_first_checkpoint_restarts_clean_logs(tiny, reference):
    cfg = small_config(tiny, tiny / "runs" / "early")
    run = ATTrainer(cfg).run()
    for state in run:  # stopped at step 3, before the first checkpoint (step 4)
        if state["step"] == 3:
            break
    run.close()
    assert not (tiny / "runs" / "early" / "checkpoint.pt").exists()
    for _ in ATTrainer(cfg).run():
        pass
    ref = tiny / "runs" / "reference"
    assert csv_rows(tiny / "runs" / "early" / "log.csv") == csv_rows(ref / "log.csv")
