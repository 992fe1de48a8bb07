"""Every wrong input of every `dmat` entry point is stopped with one line, and nothing is written.

One table of bad inputs (typed settings, operating-system faults, state files, outputs that may not
be written, values that make no sense, unsafe files), each run through the CLI's `main(argv)` in
this process: the exit code (2: bad input, found before any work; 1: a failure during the work),
exactly one line on stderr naming the problem, no traceback, and every file and folder under the
test's root (the inputs and the outputs) byte-identical before and after. Faults are simulated:
this suite runs as root in CI, where a chmod-read-only folder is still writable, so a read-only
folder is `os.access` saying no (what the output checks ask), a full disk is `shutil.disk_usage`
reporting no free space (checked before work) or `os.fsync` failing with ENOSPC (a full disk
found while writing: delayed allocation reports it there), and a folder that stops being
writable during the work is `tempfile.mkstemp` failing with EACCES.
"""
import errno
import json
import os
import shutil
import tempfile

import numpy as np
import pytest
import torch

from dmat_core.cli.main import main
from dmat_core.common.checkpoint import atomic_save
from dmat_core.images import data
from dmat_core.images.generate import generate
from dmat_core.images.unet import build_image_denoiser, save_image_denoiser
from dmat_core.images.dm_config import make_dm_config
from dmat_core.robust.classifiers import SmallCNN
from dmat_core.robust.config import make_config
from dmat_core.studies.at_dm_cache import model_path, model_settings
from dmat_core.studies.at_dm_setup import study_config


class _Evil:
    """A pickle that would run a shell command when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The inputs every case reads, and the folders some cases must refuse to write into."""
    r = tmp_path_factory.mktemp("refusals")
    data.write_tiny_cifar(r / "cifar", n_train_per_batch=20, n_test=20, seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_image_denoiser(r / "dm.pt", build_image_denoiser("tiny", num_classes=10))
        clf = SmallCNN(width=4).eval()
    atomic_save({"format": "dmat-at-weights/1", "model_state_dict": clf.state_dict(),
                 "unaveraged_model_state_dict": clf.state_dict(), "arch": clf.arch, "step": 1,
                 "config": {"arch": "small-cnn", "arch_kw": {"width": 4}, "dataset": "cifar10"}}, r / "clf.pt")
    torch.save({"x": _Evil(r / "PWNED")}, r / "evil.pt")
    generate(r / "dm.pt", r / "gen", n=4, shard_size=2, steps=1, batch_size=4, progress=False)
    shutil.copytree(r / "gen", r / "gen_truncated")
    shard = r / "gen_truncated" / "shard_00001.npz"
    shard.write_bytes(shard.read_bytes()[:-100])
    rng = np.random.default_rng(0)
    data.save_generated(r / "set.npz", rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), np.arange(20) % 10)
    (r / "compressed").mkdir()
    np.savez_compressed(r / "compressed" / "c.npz", image=np.zeros((4, 32, 32, 3), np.float32), label=np.zeros(4, int))
    (r / "file.txt").write_text("a file, not a folder\n")
    (r / "result.json").write_text(json.dumps({"steps": 6}) + "\n")         # a training run's result
    (r / "bad.json").write_text("{not json")
    (r / "list.json").write_text("[1, 2]")
    (r / "empty_out").mkdir()
    (r / "readonly").mkdir()
    for name, content in [("at_other", make_config("cpu-quick", lr=0.07, data_dir=str(r / "cifar"),
                                                   out_dir=str(r / "at_other"))),
                          ("dm_other", make_dm_config("cpu-quick", lam=0.5, out_dir=str(r / "dm_other")))]:
        (r / name).mkdir()
        content.save(r / name / "config.json")
    for name, text in [("at_list", "[]"), ("gen_list", "[]"), ("demo_list", "[1, 2]")]:
        (r / name).mkdir()
        (r / name / ("manifest.json" if name == "gen_list" else "results.json" if name == "demo_list"
                     else "config.json")).write_text(text)
    (r / "gen_foreign").mkdir()
    (r / "gen_foreign" / "shard_00000.npz").write_bytes(b"someone else's")
    (r / "demo_other").mkdir()
    (r / "demo_other" / "results.json").write_text(json.dumps({"meta": {"n": 5, "seed": 0, "quick": True}, "rows": []}))
    (r / "atdm_other").mkdir()
    (r / "atdm_other" / "results.json").write_text(json.dumps(
        {"config": study_config("inlier-ring8", True, steps=7), "at": {}, "runs": []}))
    # a model cache holding, where the study's (and the quick sweep's first study's) standard model
    # of seed 0 would be, a classifier checkpoint: a model file of another kind
    for name, cfg, at in _cache_cases():
        path = model_path(r / name / "cache", model_settings(cfg, 0, at))
        path.parent.mkdir(parents=True)
        shutil.copy(r / "clf.pt", path)
    (r / "digits_other").mkdir()
    (r / "digits_other" / "rows.json").write_text(json.dumps({"meta": {"settings": {"seeds": 3}}, "rows": []}))
    (r / "at_evil").mkdir()
    torch.save({"format": "dmat-at-train/1", "x": _Evil(r / "PWNED")}, r / "at_evil" / "checkpoint.pt")
    evil_cifar = r / "evil_cifar" / "cifar-10-batches-py"
    evil_cifar.mkdir(parents=True)
    import pickle
    for f in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        (evil_cifar / f).write_bytes(pickle.dumps(_Evil(r / "PWNED")))
    return r


def _cache_cases():
    """(folder, configuration, AT options of the standard arm) of the two bad caches."""
    from dmat_core.diffusion.losses import ATConfig
    from dmat_core.studies.at_dm_sweep import settings_grid, sweep_config
    g = settings_grid(sweep_config(True))[0]["study"]
    over = {k: v for k, v in g.items() if k not in ("preset", "seeds", "quick", "variants", "at")}
    return [("atdm_badcache", study_config("inlier-ring8", True), ATConfig("standard").as_dict()),
            ("sweep_badcache", study_config("inlier-ring8", True, **over),
             ATConfig(**{**g["at"], "variant": "standard"}).as_dict())]


def snapshot(r):
    """Every folder and every file's bytes under r: what 'nothing written' means."""
    return {str(p.relative_to(r)): (p.read_bytes() if p.is_file() else None) for p in sorted(r.rglob("*"))}


# ------------------------------------------------------------------------------------ faults
def _readonly(monkeypatch, r):
    """`readonly/` (and anything under it) cannot be written (os.access says so, as for a user)."""
    real = os.access

    def access(path, mode, *a, **kw):
        if mode & os.W_OK and str(os.path.abspath(path)).startswith(str(r / "readonly")):
            return False
        return real(path, mode, *a, **kw)
    monkeypatch.setattr(os, "access", access)


def _disk_full(monkeypatch, r):
    """The disk has 1 kB free (what the output checks read before any work)."""
    usage = shutil.disk_usage(r)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))


def _enospc_on_write(monkeypatch, r):
    """The disk fills during the work: flushing a written file fails with ENOSPC."""
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", fsync)


def _eacces_on_write(monkeypatch, r):
    """The output folder stops being writable during the work: creating a file fails with EACCES."""
    def mkstemp(*a, **kw):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), kw.get("dir"))
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


FAULTS = {"readonly": _readonly, "disk_full": _disk_full, "enospc": _enospc_on_write, "eacces": _eacces_on_write}

TA = ["train-at", "--preset", "cpu-quick", "--data-dir", "{r}/cifar", "--no-progress"]
TD = ["train-dm", "--preset", "cpu-quick", "--data-dir", "{r}/cifar", "--no-progress"]
GEN = ["generate", "--checkpoint", "{r}/dm.pt", "--num-images", "4", "--shard-size", "2", "--steps", "1",
       "--batch-size", "4", "--no-progress"]
EVAL = ["eval", "--checkpoint", "{r}/clf.pt", "--data-dir", "{r}/cifar", "--n", "4", "--attacks", "clean"]
SAMPLE = ["toy", "sample", "--dist", "ring8", "--n", "100", "--steps", "2"]
LIK = ["toy", "likelihood", "--dist", "ring8", "--n", "10"]
NEW = "{r}/new_out"          # an output that must not appear

# (id, argv, exit code, what the one line must say, fault)
CASES = [
    # ---- train-at: typed settings (strict types, ranges, choices, unknown keys)
    ("at-bool-string", TA + ["--out", NEW, "--set", "augment=False"], 2, 'augment="False": augment must be true or false', None),
    ("at-bool-no", TA + ["--out", NEW, "--set", "make_tiny_data=no"], 2, 'make_tiny_data="no": make_tiny_data must be true or false', None),
    ("at-number-is-bool", TA + ["--out", NEW, "--set", "beta=true"], 2, "beta=true: beta must be a number", None),
    ("at-int-is-float", TA + ["--out", NEW, "--set", "attack_steps=2.5"], 2, "attack_steps=2.5: attack_steps must be an integer >= 1", None),
    ("at-dict-is-string", TA + ["--out", NEW, "--set", "arch_kw=width"], 2, 'arch_kw="width": arch_kw must be a JSON object', None),
    ("at-lr-negative", TA + ["--out", NEW, "--lr", "-1"], 2, "lr=-1.0: lr must be a number in (0, 100]", None),
    ("at-lr-nan", TA + ["--out", NEW, "--lr", "nan"], 2, "lr=NaN: lr must be a number", None),
    ("at-steps-zero", TA + ["--out", NEW, "--steps", "0"], 2, "steps=0: steps must be null or an integer >= 1", None),
    ("at-batch-zero", TA + ["--out", NEW, "--batch-size", "0"], 2, "batch_size=0: batch_size must be an integer >= 1", None),
    ("at-eps-pixels", TA + ["--out", NEW, "--eps", "8"], 2, "write 8/255", None),
    ("at-eps-text", TA + ["--out", NEW, "--eps", "eight"], 2, "cannot read a budget from 'eight'", None),
    ("at-method", TA + ["--out", NEW, "--set", "method=madry"], 2, 'method="madry": method must be one of "trades", "pgd"', None),
    ("at-arch", TA + ["--out", NEW, "--set", "arch=resnet-1000"], 2, "unknown classifier", None),
    ("at-no-generated", TA + ["--out", NEW, "--unsup-fraction", "0.7"], 2, "no generated set is given", None),
    ("at-generated-missing", TA + ["--out", NEW, "--unsup-fraction", "0.5", "--generated", "{r}/nope.npz"], 2,
     "generated data not found", None),
    ("at-unknown-key", TA + ["--out", NEW, "--set", "learning_rate=0.1"], 2, "unknown setting(s) ['learning_rate']", None),
    ("at-set-no-value", TA + ["--out", NEW, "--set", "lam"], 2, "--set expects key=value, got 'lam'", None),
    ("at-device", TA + ["--out", NEW, "--device", "tpu"], 2, "device must be auto, cpu, cuda or cuda:N", None),
    ("at-seed-negative", TA + ["--out", NEW, "--seed", "-1"], 2, "argument --seed: must be an integer >= 0", None),
    ("at-config-missing", TA + ["--out", NEW, "--config", "{r}/nope.json"], 2, "config file not found", None),
    ("at-config-not-json", TA + ["--out", NEW, "--config", "{r}/bad.json"], 2, "bad.json: not valid JSON", None),
    ("at-config-list", TA + ["--out", NEW, "--config", "{r}/list.json"], 2, "holds one JSON object, this holds a list", None),
    ("at-config-folder", TA + ["--out", NEW, "--config", "{r}/cifar"], 2, "must be a file, this is a folder", None),
    # ---- train-at: the output folder
    ("at-out-is-file", TA + ["--out", "{r}/file.txt"], 2, "file.txt is a file; a folder is expected", None),
    ("at-out-other-run", TA + ["--out", "{r}/at_other"], 2, "lr: 0.07 there, 0.05 now", None),
    ("at-out-config-list", TA + ["--out", "{r}/at_list"], 2, "is not the config of a train-at run", None),
    ("at-out-readonly", TA + ["--out", "{r}/readonly/run"], 2, "cannot write in", "readonly"),
    ("at-out-evil-checkpoint", TA + ["--out", "{r}/at_evil", "--steps", "2", "--set", "n_val=20"], 2, "could run code when loaded; refused", None),
    ("at-evil-cifar", TA + ["--out", NEW, "--data-dir", "{r}/evil_cifar"], 2, "not a valid CIFAR pickle", None),
    ("at-disk-full-while-writing", TA + ["--out", "{r}/empty_out", "--steps", "2", "--set", "n_val=20", "--set", 'arch_kw={"width": 4}'], 1, "No space left on device", "enospc"),
    # ---- train-dm
    ("dm-bool-string", TD + ["--out", NEW, "--set", "flip=False"], 2, 'flip="False": flip must be true or false', None),
    ("dm-channel-mult", TD + ["--out", NEW, "--set", 'unet={"channel_mult": "1,2"}'], 2, 'unet.channel_mult="1,2": must be a valid list', None),
    ("dm-unet-key", TD + ["--out", NEW, "--set", 'unet={"width": 3}'], 2, "unknown setting 'unet.width'", None),
    ("dm-noise-p", TD + ["--out", NEW, "--noise-p", "1.5"], 2, "noise_p=1.5: noise_p must be a number in [0, 1]", None),
    ("dm-variant", TD + ["--out", NEW, "--at-variant", "fgsm"], 2, 'at_variant="fgsm": at_variant must be one of', None),
    ("dm-batch-zero", TD + ["--out", NEW, "--batch", "0"], 2, "batch_size=0: batch_size must be an integer >= 1", None),
    ("dm-grad-clip-zero", TD + ["--out", NEW, "--set", "grad_clip=0"], 2, "grad_clip=0: grad_clip must be null or a number > 0", None),
    ("dm-size", TD + ["--out", NEW, "--set", "size=huge"], 2, 'size="huge": size must be one of "tiny", "small", "large"', None),
    ("dm-out-other-run", TD + ["--out", "{r}/dm_other"], 2, "lam: 0.5 there, 0.3 now", None),
    ("dm-out-at-run", TD + ["--out", "{r}/at_other"], 2, "is not the config of a train-dm run", None),
    ("dm-out-disk-full", TD + ["--out", "{r}/readonly/run"], 2, "cannot write in", "readonly"),
    ("dm-disk-full-while-writing", TD + ["--out", "{r}/empty_out", "--steps", "2"], 1, "No space left on device", "enospc"),
    # ---- generate
    ("gen-n-zero", GEN[:4] + ["0"] + GEN[5:] + ["--out", NEW], 2, "argument --num-images/--n: must be an integer >= 1", None),
    ("gen-churn-negative", GEN + ["--out", NEW, "--churn", "-1"], 2, "argument --churn: must be a number >= 0", None),
    ("gen-churn-sampler", GEN + ["--out", NEW, "--churn", "5", "--sampler", "euler"], 2, "--churn is an option of the heun sampler", None),
    ("gen-shard-zero", GEN + ["--out", NEW, "--shard-size", "0"], 2, "argument --shard-size: must be an integer >= 1", None),
    ("gen-classes-text", GEN + ["--out", NEW, "--classes", "0,x"], 2, "--classes expects comma-separated integers", None),
    ("gen-classes-range", GEN + ["--out", NEW, "--classes", "0,12"], 2, r"classes must be distinct labels in [0, 10)", None),
    ("gen-checkpoint-missing", GEN[:2] + ["{r}/nope.pt"] + GEN[3:] + ["--out", NEW], 2, "--checkpoint {r}/nope.pt: no such file", None),
    ("gen-checkpoint-evil", GEN[:2] + ["{r}/evil.pt"] + GEN[3:] + ["--out", NEW], 2, "could run code when loaded; refused", None),
    ("gen-checkpoint-classifier", GEN[:2] + ["{r}/clf.pt"] + GEN[3:] + ["--out", NEW], 2, "not a dmat diffusion-model checkpoint", None),
    ("gen-out-other-run", GEN + ["--out", "{r}/gen", "--seed", "5"], 2, "seed: 0 there, 5 now", None),
    ("gen-manifest-list", GEN + ["--out", "{r}/gen_list"], 2, "is not a manifest of `dmat generate`", None),
    ("gen-out-foreign", GEN + ["--out", "{r}/gen_foreign"], 2, "but no manifest.json", None),
    ("gen-out-is-file", GEN + ["--out", "{r}/file.txt"], 2, "file.txt is a file; a folder is expected", None),
    ("gen-merge-exists", GEN + ["--out", NEW, "--merge", "{r}/set.npz"], 2, "--merge {r}/set.npz exists", None),
    ("gen-merge-readonly", GEN + ["--out", NEW, "--merge", "{r}/readonly/all.npz"], 2, "cannot write in", "readonly"),
    ("gen-filtered-exists", GEN + ["--out", NEW, "--filter-classifier", "{r}/clf.pt", "--filtered", "{r}/set.npz"], 2,
     "--filtered {r}/set.npz exists", None),
    ("gen-filter-no-out", GEN + ["--out", NEW, "--filter-classifier", "{r}/clf.pt"], 2, "needs --filtered", None),
    ("gen-disk-full", GEN + ["--out", NEW, "--num-images", "200"], 2, "free some space or write elsewhere", "disk_full"),
    ("gen-disk-full-while-writing", GEN + ["--out", "{r}/empty_out"], 1, "No space left on device", "enospc"),
    # ---- eval
    ("eval-out-exists", EVAL + ["--out", "{r}/result.json"], 2, "--out {r}/result.json exists", None),
    ("eval-out-folder", EVAL + ["--out", "{r}/cifar"], 2, "is a folder; give a file name", None),
    ("eval-eps", EVAL + ["--out", "{r}/new.json", "--eps", "8"], 2, "--eps=8 is out of range", None),
    ("eval-attack", EVAL + ["--out", "{r}/new.json", "--attacks", "clean,fgsm"], 2, "--attacks: unknown ['fgsm']", None),
    ("eval-n-zero", EVAL + ["--out", "{r}/new.json", "--n", "0"], 2, "argument --n: must be an integer >= 1", None),
    ("eval-arch-kw", EVAL + ["--out", "{r}/new.json", "--arch-kw", "{width"], 2, "--arch-kw: not valid JSON", None),
    ("eval-evil", ["eval", "--checkpoint", "{r}/evil.pt", "--out", "{r}/new.json"], 2, "could run code when loaded; refused", None),
    ("eval-missing", ["eval", "--checkpoint", "{r}/nope.pt", "--out", "{r}/new.json"], 2, "--checkpoint {r}/nope.pt: no such file", None),
    ("eval-disk-full-while-writing", EVAL + ["--out", "{r}/new.json"], 1, "new.json: No space left on device", "enospc"),
    # ---- gen-filter, gen-quality
    ("filter-keep-zero", ["gen-filter", "{r}/set.npz", "--classifier", "{r}/clf.pt", "--keep", "0", "--out", "{r}/f.npz"], 2,
     "argument --keep: must be a number in (0, 1]", None),
    ("filter-out-exists", ["gen-filter", "{r}/set.npz", "--classifier", "{r}/clf.pt", "--out", "{r}/set.npz"], 2,
     "--out {r}/set.npz exists", None),
    ("filter-set-missing", ["gen-filter", "{r}/nope.npz", "--classifier", "{r}/clf.pt", "--out", "{r}/f.npz"], 2,
     "generated set not found", None),
    ("filter-truncated-shard", ["gen-filter", "{r}/gen_truncated", "--classifier", "{r}/clf.pt", "--out", "{r}/f.npz"], 2,
     "shard_00001.npz: damaged", None),
    ("quality-classes-zero", ["gen-quality", "{r}/set.npz", "--num-classes", "0"], 2, "argument --num-classes: must be an integer >= 1", None),
    ("quality-classes-few", ["gen-quality", "{r}/set.npz", "--num-classes", "3"], 2, "--num-classes 3: the set has labels up to 9", None),
    ("quality-out-exists", ["gen-quality", "{r}/set.npz", "--out", "{r}/result.json"], 2, "--out {r}/result.json exists", None),
    ("quality-out-folder", ["gen-quality", "{r}/set.npz", "--out", "{r}/cifar"], 2, "is a folder; give a file name", None),
    ("quality-compressed-bad", ["gen-quality", "{r}/compressed/c.npz"], 2, "'image' must be uint8", None),
    ("quality-manifest-list", ["gen-quality", "{r}/gen_list"], 2, "is not a manifest of `dmat generate`", None),
    # ---- toy sample, toy likelihood
    ("sample-churn-negative", SAMPLE + ["--json", "--churn", "-1"], 2, "argument --churn: must be a number >= 0", None),
    ("sample-churn-sampler", SAMPLE + ["--json", "--churn", "1", "--sampler", "euler"], 2, "--churn is an option of the heun sampler", None),
    ("sample-n-zero", SAMPLE + ["--json", "--n", "0"], 2, "argument --n: must be an integer >= 1, got 0", None),
    ("sample-steps-zero", SAMPLE + ["--json", "--steps", "0"], 2, "argument --steps: must be an integer >= 1, got 0", None),
    ("sample-denoiser", SAMPLE + ["--json", "--denoiser", "net.pt"], 2, "unknown denoiser 'net.pt'", None),
    ("sample-nothing-to-do", SAMPLE, 2, "nothing to do: give --out FILE.npz and/or --json", None),
    ("sample-dist", ["toy", "sample", "--dist", "ring9", "--json"], 2, "invalid choice: 'ring9'", None),
    ("sample-out-exists", SAMPLE + ["--out", "{r}/set.npz"], 2, "--out {r}/set.npz exists", None),
    ("sample-out-folder", SAMPLE + ["--out", "{r}/cifar"], 2, "is a folder; give a file name", None),
    ("sample-parent-is-file", SAMPLE + ["--out", "{r}/file.txt/x.npz"], 2, "file.txt is a file, not a folder", None),
    ("sample-readonly", SAMPLE + ["--out", "{r}/readonly/x.npz"], 2, "cannot write in", "readonly"),
    ("sample-disk-full", SAMPLE + ["--out", "{r}/x.npz"], 2, "free some space or write elsewhere", "disk_full"),
    ("sample-disk-full-while-writing", SAMPLE + ["--out", "{r}/x.npz"], 1, "x.npz: No space left on device", "enospc"),
    ("sample-folder-unwritable-while-writing", SAMPLE + ["--out", "{r}/x.npz"], 1, "Permission denied", "eacces"),
    ("likelihood-n-zero", LIK + ["--n", "0"], 2, "argument --n: must be an integer >= 1", None),
    ("likelihood-sigma-min", LIK + ["--sigma-min", "0"], 2, "argument --sigma-min: must be a number > 0", None),
    ("likelihood-sigma-order", LIK + ["--sigma-max", "0.001"], 2, "--sigma-max 0.001 must be larger than --sigma-min 0.002", None),
    ("likelihood-missing", LIK + ["--denoiser", "{r}/nope.pt"], 2, "--denoiser {r}/nope.pt: no such file", None),
    ("likelihood-evil", LIK + ["--denoiser", "{r}/evil.pt"], 2, "could run code when loaded; refused", None),
    # ---- demo and the studies: nothing created before the arguments are valid
    ("demo-n", ["demo", "--quick", "--n", "1", "--out", NEW], 2, "argument --n: must be an integer >= 2", None),
    ("demo-out-is-file", ["demo", "--quick", "--out", "{r}/file.txt"], 2, "file.txt is a file; a folder is expected", None),
    ("demo-other-settings", ["demo", "--quick", "--n", "100", "--out", "{r}/demo_other"], 2, "n: 5 there, 100 now", None),
    ("demo-results-list", ["demo", "--quick", "--out", "{r}/demo_list"], 2, "is not a results file of demo (a results file holds one JSON object, this holds a list)", None),
    ("demo-readonly", ["demo", "--quick", "--out", "{r}/readonly/demo"], 2, "cannot write in", "readonly"),
    ("atdm-p", ["toy", "at-dm-study", "--quick", "--p", "1.5", "--out", NEW], 2, "p=1.5: p must be a number in [0, 1]", None),
    ("atdm-n-train", ["toy", "at-dm-study", "--quick", "--n-train", "0", "--out", NEW], 2, "n_train=0: n_train must be an integer >= 2", None),
    ("atdm-seeds", ["toy", "at-dm-study", "--quick", "--seeds", "0", "--out", NEW], 2, "argument --seeds: must be an integer >= 1", None),
    ("atdm-lam", ["toy", "at-dm-study", "--quick", "--lam", "-1", "--out", NEW], 2, "lam=-1.0: lam must be null or a number >= 0", None),
    ("atdm-out-is-file", ["toy", "at-dm-study", "--quick", "--out", "{r}/file.txt"], 2, "is a file; a folder is expected", None),
    ("atdm-other-config", ["toy", "at-dm-study", "--preset", "inlier-ring8", "--quick", "--out", "{r}/atdm_other"], 2,
     "steps: 7 there, 150 now", None),
    ("atdm-sampler-sigma-min", ["toy", "at-dm-study", "--quick", "--sampler-sigma-min", "0", "--out", NEW], 2,
     "sampler_sigma_min=0.0: sampler_sigma_min must be a number in (0, 80)", None),
    ("atdm-shrink-sigmas", ["toy", "at-dm-study", "--quick", "--shrink-sigmas", "0.1", "--out", NEW], 2,
     "shrink_sigmas must be distinct numbers in [0, 80) and hold 0", None),
    ("atdm-n-eval", ["toy", "at-dm-study", "--quick", "--n-eval", "0", "--out", NEW], 2,
     "n_eval=0: n_eval must be an integer >= 2", None),
    ("atdm-dist", ["toy", "at-dm-study", "--quick", "--dist", "ring9", "--out", NEW], 2, "invalid choice: 'ring9'", None),
    ("atdm-target", ["toy", "at-dm-study", "--quick", "--target", "eps", "--out", NEW], 2, "invalid choice: 'eps'", None),
    ("atdm-ideal-outliers", ["toy", "at-dm-study", "--preset", "outliers-ring8", "--quick", "--variants", "standard",
                             "ideal-standard", "--out", NEW], 2, "ideal-standard: the training distribution with uniform", None),
    ("atdm-cache-is-file", ["toy", "at-dm-study", "--quick", "--cache", "{r}/file.txt", "--out", NEW], 2,
     "--cache {r}/file.txt is a file; a folder is expected", None),
    ("atdm-cache-model-of-another-kind", ["toy", "at-dm-study", "--preset", "inlier-ring8", "--quick", "--variants",
                                          "standard", "--cache", "{r}/atdm_badcache/cache", "--out", NEW], 2,
     "not a toy run (format 'dmat-at-weights/1'", None),
    ("sweep-dist", ["toy", "at-dm-sweep", "--quick", "--dist", "ring9", "--out", NEW], 2, "invalid choice: 'ring9'", None),
    ("sweep-seeds", ["toy", "at-dm-sweep", "--quick", "--seeds", "1", "--out", NEW], 2,
     "argument --seeds: must be an integer >= 2", None),
    ("sweep-floor", ["toy", "at-dm-sweep", "--quick", "--floors", "-0.1", "0", "--out", NEW], 2,
     "floors must be distinct numbers >= 0", None),
    ("sweep-sigma-min", ["toy", "at-dm-sweep", "--quick", "--sigma-mins", "0", "--out", NEW], 2,
     "sigma_mins must be distinct numbers in (0, 80)", None),
    ("sweep-no-standard", ["toy", "at-dm-sweep", "--quick", "--variants", "adversarial", "--out", NEW], 2,
     "variants must include standard", None),
    ("sweep-collect-no-folders", ["toy", "at-dm-sweep", "--quick", "--collect", "--out", NEW], 2,
     "study results not found: {r}/new_out/s0.2/smin0.02/floor0/results.json", None),
    ("sweep-collect-run-options", ["toy", "at-dm-sweep", "--quick", "--collect", "--workers", "2", "--fresh",
                                   "--out", NEW], 2, "--collect runs nothing, so --workers, --fresh would have no effect",
     None),
    ("sweep-out-is-file", ["toy", "at-dm-sweep", "--quick", "--out", "{r}/file.txt"], 2, "is a file; a folder is expected", None),
    ("sweep-readonly", ["toy", "at-dm-sweep", "--quick", "--out", "{r}/readonly/sweep"], 2, "cannot write in", "readonly"),
    ("sweep-cache-model-of-another-kind", ["toy", "at-dm-sweep", "--quick", "--out", "{r}/sweep_badcache"], 2,
     "not a toy run (format 'dmat-at-weights/1'", None),
    ("atclf-eps", ["toy", "at-classifier-study", "--quick", "--eps", "-0.1", "--out", NEW], 2, "eps=-0.1: eps must be a number >= 0", None),
    ("atclf-classes", ["toy", "at-classifier-study", "--quick", "--classes", "3", "--out", NEW], 2,
     "modes must be a multiple of classes=3", None),
    ("atclf-results-list", ["toy", "at-classifier-study", "--quick", "--out", "{r}/demo_list"], 2,
     "is not a results file of at-classifier-study", None),
    ("gendata-d", ["toy", "gen-data-study", "--quick", "--d", "0", "--out", NEW], 2, "d must be integers >= 1", None),
    ("gendata-generator", ["toy", "gen-data-study", "--quick", "--generators", "gan", "--out", NEW], 2,
     'generators.0="gan": must be', None),
    ("gendata-d-text", ["toy", "gen-data-study", "--quick", "--d", "two", "--out", NEW], 2, "invalid int value: 'two'", None),
    ("digits-seeds", ["digits-study", "--quick", "--seeds", "1", "--out", NEW], 2, "argument --seeds: must be an integer >= 2", None),
    ("digits-workers", ["digits-study", "--quick", "--workers", "0", "--out", NEW], 2, "argument --workers: must be an integer >= 1", None),
    ("digits-out-is-file", ["digits-study", "--quick", "--out", "{r}/file.txt"], 2, "is a file; a folder is expected", None),
    ("digits-readonly", ["digits-study", "--quick", "--out", "{r}/readonly/digits"], 2, "cannot write in", "readonly"),
    ("digits-other-settings", ["digits-study", "--quick", "--out", "{r}/digits_other"], 2,
     "holds digits-study results of other settings (seeds: 3 there, 2 here", None),
    ("at-dataset-digits-typo", ["train-at", "--preset", "digits", "--set", "dataset=digit", "--out", NEW], 2,
     'dataset="digit": dataset must be one of', None),
]


@pytest.mark.parametrize("name, argv, code, message, fault", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line_and_writes_nothing(root, name, argv, code, message, fault,
                                                             capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(root)
    monkeypatch.setenv("DMAT_CACHE", str(tmp_path / "cache"))       # a reader's cache: outside root
    if fault:
        FAULTS[fault](monkeypatch, root)
    before = snapshot(root)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([a.replace("{r}", str(root)) for a in argv])
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert e.value.code == code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert message.replace("{r}", str(root)) in err, err
    assert snapshot(root) == before, f"{name} changed files under the root"
    assert not (root / "PWNED").exists()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.npy"))


def test_the_table_covers_every_entry_point_and_fault():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)
    commands = {c[1][0] if c[1][0] != "toy" else "toy " + c[1][1] for c in CASES}
    assert commands >= {"train-at", "train-dm", "generate", "eval", "gen-filter", "gen-quality", "demo",
                        "toy sample", "toy likelihood", "toy at-dm-study", "toy at-dm-sweep", "toy at-classifier-study",
                        "toy gen-data-study", "digits-study"}
    assert {c[4] for c in CASES} >= set(FAULTS)
