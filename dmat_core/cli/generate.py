r"""`dmat generate`, `dmat gen-filter`, `dmat gen-quality`: generated training data from the shell.

    dmat generate --checkpoint runs/dm/checkpoint.pt --out gen/c10 --num-images 50000 --merge gen/c10.npz
    torchrun --standalone --nproc_per_node 8 -m dmat_core generate --checkpoint ... --out gen/c10 \
        --num-images 5000000 --shard-size 10000 --amp bf16
    dmat gen-filter gen/c10 --classifier runs/wrn/best.pt --keep 0.2 --out gen/c10-top20.npz
    dmat gen-quality gen/c10.npz --classifier runs/wrn/best.pt --reference data/ --out quality.json

`generate` is the paper's recipe by default (class-conditional EDM model, deterministic Heun, 20
steps; docs/science.md section 4), written as `.npz` shards plus `manifest.json`, which records each
shard's SHA-256 when it is written; started again with the same arguments it makes only the missing
shards, and those whose bytes no longer match (said on stderr). Every output (--out, --merge,
--filtered) is checked before any image is made: an existing file or run of another kind is refused
unless --overwrite. `gen-filter` keeps the top fraction per class by a
classifier's probability of the conditioning class; `gen-quality` reports that classifier's
accuracy and confidence on the set, its class balance, and FID against a reference set when
torch-fidelity and its Inception weights are available ("FID skipped: <reason>" otherwise).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..common.outputs import check_out_file, start_work
from ..common.settings import check_device, int_at_least, number_in
from .settings import json_object_flag

__all__ = ["add_parser"]


def _classes(text):
    if text is None:
        return None
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"--classes expects comma-separated integers, got {text!r}") from None


def _classifier(a):
    from ..common.settings import resolve_device
    from ..robust.evaluate import load_trained_classifier
    model, info = load_trained_classifier(a.classifier, a.arch, arch_kw=json_object_flag(a.arch_kw, "--arch-kw"))
    return model.to(resolve_device(a.device)), info


def _input_file(path, flag: str) -> None:
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file")


def _input_set(path) -> None:
    """A generated set to read: an .npz file or a folder (of `dmat generate`, or of .npy files)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"generated set not found: {path}")


# ----------------------------------------------------------------------------- generate
def _generate_main(a: argparse.Namespace) -> int:
    from ..common.train_utils import dist_info
    from ..images.generate import bytes_per_image, generate
    from ..images.quality import filter_generated, open_generated

    if a.filter_classifier and not a.filtered:
        raise ValueError("--filter-classifier needs --filtered OUT.npz (where the kept images go)")
    if a.filtered and not a.filter_classifier:
        raise ValueError("--filtered needs --filter-classifier CK (the classifier that scores the images)")
    if a.churn and a.sampler != "heun":
        raise ValueError(f"--churn is an option of the heun sampler (EDM S_churn), not of {a.sampler}")
    check_device(a.device)
    json_object_flag(a.filter_arch_kw, "--filter-arch-kw")
    _input_file(a.checkpoint, "--checkpoint")
    _input_file(a.filter_classifier, "--filter-classifier")

    def outputs_ok(m: dict) -> None:                     # after the settings and the checkpoint, before any image
        if a.filtered:
            check_out_file(a.filtered, flag="--filtered", overwrite=a.overwrite,
                           size=int(m["n"] * a.keep + 1) * bytes_per_image(m) + 4096)

    kw = {"S_churn": a.churn} if a.churn else {}
    summary = generate(a.checkpoint, a.out, a.n, per_class=a.per_class, shard_size=a.shard_size,
                       classes=_classes(a.classes), seed=a.seed, sampler=a.sampler, steps=a.steps,
                       sampler_kwargs=kw, amp=a.amp, batch_size=a.batch_size, device=a.device,
                       ema=not a.raw_weights, expect_arch=a.size, overwrite=a.overwrite,
                       progress=not a.no_progress, merge_to=a.merge, check_outputs=outputs_ok)
    if dist_info()[0] != 0:
        return 0
    rate = summary["images_per_s"]
    print(f"generated {summary['images_made']} image(s) in {summary['shards_made']} shard(s)"
          + (f" ({summary['shards_repaired']} of them made again: damaged)" if summary["shards_repaired"] else "")
          + (f" at {rate:.1f} images/s ({summary['nfe_per_image']} NFE each)" if rate else
             " (nothing left to do: every shard matches its checksum)"), file=sys.stderr)
    if a.filter_classifier:
        model, info = _classifier(argparse.Namespace(classifier=a.filter_classifier, arch=a.filter_arch,
                                                     arch_kw=a.filter_arch_kw, device=a.device))
        summary["filter"] = filter_generated(open_generated(a.out, None), model, a.filtered, a.keep,
                                             batch_size=a.batch_size)
        summary["filter"]["classifier"] = info
    print(json.dumps(summary, indent=2))
    return 0


def _add_generate(sub) -> None:
    from ..diffusion.samplers import SAMPLERS
    p = sub.add_parser("generate", help="class-conditional generation into .npz shards (resumable, torchrun)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a `dmat train-dm` checkpoint (EMA weights)")
    p.add_argument("--out", required=True, help="output directory (shards + manifest.json); resumes")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--num-images", "--n", dest="n", type=int_at_least(1),
                      help="images in all (labels cycle through the classes); under torchrun write "
                      "--num-images: torchrun takes --n for an abbreviation of its own options")
    size.add_argument("--per-class", type=int_at_least(1), help="images per class")
    p.add_argument("--classes", help="comma list of the classes to generate (default: all of the model's)")
    p.add_argument("--sampler", default="heun", choices=sorted(SAMPLERS), help="(default: heun, EDM Alg. 2)")
    p.add_argument("--steps", type=int_at_least(1), default=20, help="sampler steps (default 20, the paper's CIFAR-10)")
    p.add_argument("--churn", type=number_in(0.0), default=0.0, help="EDM S_churn >= 0 for heun (default 0: deterministic)")
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--shard-size", type=int_at_least(1), default=10_000, help="images per shard (default 10000)")
    p.add_argument("--batch-size", type=int_at_least(1), default=256, help="images per network call (default 256)")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off", help="autocast (bf16 on CUDA)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK if available)")
    p.add_argument("--size", choices=["tiny", "small", "large"], help="refuse a checkpoint of another size")
    p.add_argument("--raw-weights", action="store_true", help="the raw weights instead of the EMA")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the shards of another run in --out, and existing --merge/--filtered files")
    p.add_argument("--merge", metavar="OUT.npz", help="also join all shards into one file at the end")
    p.add_argument("--filter-classifier", metavar="CK", help="score images with this classifier checkpoint")
    p.add_argument("--filter-arch", help="its architecture, if the file does not say (e.g. wrn-28-10)")
    p.add_argument("--filter-arch-kw", help="JSON keyword arguments of that architecture")
    p.add_argument("--keep", type=number_in(0.0, 1.0, low_open=True), default=0.2,
                   help="fraction kept per class (default 0.2)")
    p.add_argument("--filtered", metavar="OUT.npz", help="where the kept images go")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_generate_main)


# ----------------------------------------------------------------------------- gen-filter
def _filter_main(a: argparse.Namespace) -> int:
    from ..images.generate import bytes_per_image
    from ..images.quality import filter_generated, open_generated
    check_device(a.device)
    json_object_flag(a.arch_kw, "--arch-kw")
    _input_set(a.set)
    _input_file(a.classifier, "--classifier")
    parts = open_generated(a.set, None)
    check_out_file(a.out, overwrite=a.overwrite,
                   size=int(sum(len(y) for _, y in parts) * a.keep + 1) * bytes_per_image() + 4096)
    model, info = _classifier(a)
    start_work()
    report = filter_generated(parts, model, a.out, a.keep, batch_size=a.batch_size)
    report["classifier"] = info
    print(json.dumps(report, indent=2))
    return 0


def _add_classifier_args(p, required: bool) -> None:
    p.add_argument("set", help="a generated .npz, or an output directory of `dmat generate`")
    p.add_argument("--classifier", required=required, help="classifier checkpoint (train-at or published)")
    p.add_argument("--arch", help="its architecture, if the file does not say (e.g. wrn-28-10)")
    p.add_argument("--arch-kw", help="JSON keyword arguments of that architecture")
    p.add_argument("--batch-size", type=int_at_least(1), default=256)
    p.add_argument("--device", help="default: cuda if available, else cpu")


def _add_filter(sub) -> None:
    p = sub.add_parser("gen-filter", help="keep the top fraction per class by a classifier's confidence",
                       description="Score each image by the classifier's softmax probability of its "
                       "label; keep the top --keep per class (balanced) in --out (Wang et al. 2023).")
    _add_classifier_args(p, required=True)
    p.add_argument("--keep", type=number_in(0.0, 1.0, low_open=True), default=0.2,
                   help="fraction kept per class (default 0.2)")
    p.add_argument("--out", required=True, help="the filtered .npz")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_filter_main)


# ----------------------------------------------------------------------------- gen-quality
def _reference(a):
    """uint8 reference images for FID: a generated set, or CIFAR (train split by default)."""
    import numpy as np

    from ..images.data import load_cifar
    from ..images.quality import open_generated
    path = Path(a.reference)
    if path.suffix == ".npz" or (path / "manifest.json").is_file():
        return np.concatenate([x for x, _ in open_generated(path, None)])
    return load_cifar(path, a.dataset, train=a.reference_split == "train")[0]


def _first(parts, n: int):
    """The first n images of a set held in parts, as one array."""
    import numpy as np
    out, left = [], n
    for x, _ in parts:
        if left <= 0:
            break
        out.append(np.asarray(x[:left]))
        left -= len(out[-1])
    return np.concatenate(out)


def _quality_main(a: argparse.Namespace) -> int:
    import numpy as np

    from ..common.checkpoint import atomic_write_text
    from ..images.quality import class_balance, class_probabilities, fid_score, open_generated, quality_report

    check_device(a.device)
    json_object_flag(a.arch_kw, "--arch-kw")
    _input_set(a.set)
    _input_file(a.classifier, "--classifier")
    if a.reference and not Path(a.reference).exists():
        raise FileNotFoundError(f"--reference {a.reference}: no such file or folder")
    if a.out:
        check_out_file(a.out, overwrite=a.overwrite, size=1 << 16)
    parts = open_generated(a.set, None)
    labels = np.concatenate([y for _, y in parts])
    if a.num_classes is not None and len(labels) and int(labels.max()) >= a.num_classes:
        raise ValueError(f"--num-classes {a.num_classes}: the set has labels up to {int(labels.max())}")
    start_work()
    report: dict = {"set": str(a.set)}
    if a.classifier:
        model, info = _classifier(a)
        probs = np.concatenate([class_probabilities(model, x, a.batch_size) for x, _ in parts])
        report.update(quality_report(probs, labels, a.num_classes), classifier=info)
    else:                                                          # class balance only
        report.update(class_balance(labels, a.num_classes or int(labels.max()) + 1))
    if a.reference:
        report.update(fid_score(_first(parts, a.n_fid), _reference(a)[:a.n_fid], weights=a.fid_weights,
                                download=not a.no_download, device=a.device))
        if report["fid"] is None:
            print(report["fid_skipped"], file=sys.stderr)
    text = json.dumps(report, indent=2)
    if a.out:
        atomic_write_text(a.out, text + "\n")
    print(text)
    return 0


def _add_quality(sub) -> None:
    p = sub.add_parser("gen-quality", help="accuracy/confidence of a classifier, class balance, FID",
                       description="Offline quality of a generated set (JSON): a classifier's accuracy "
                       "and mean confidence per class and overall, class balance, and FID against "
                       "--reference (torch-fidelity; skipped with the reason when it cannot run).")
    _add_classifier_args(p, required=False)
    p.add_argument("--num-classes", type=int_at_least(1), help="classes (default: the classifier's, else max label + 1)")
    p.add_argument("--reference", help="FID reference: a CIFAR folder/archive, a .npz, or a generate directory")
    p.add_argument("--dataset", choices=["cifar10", "cifar100"], default="cifar10")
    p.add_argument("--reference-split", choices=["train", "test"], default="train")
    p.add_argument("--n-fid", type=int_at_least(2), default=50_000, help="images of each set used for FID (50000)")
    p.add_argument("--fid-weights", help="a local copy of torch-fidelity's Inception weights file")
    p.add_argument("--no-download", action="store_true", help="never fetch the Inception weights")
    p.add_argument("--out", help="also write the JSON report here (an existing file is refused unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_quality_main)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `generate`, `gen-filter` and `gen-quality` on the top-level sub-commands of `dmat`."""
    _add_generate(sub)
    _add_filter(sub)
    _add_quality(sub)
