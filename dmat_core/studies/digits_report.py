"""The tables of the digits study (:mod:`~dmat_core.studies.digits_study`) from its ``rows.json``.

Every comparison is paired by seed: the difference of two arms is taken seed by seed and shown as
mean +- standard error over the seeds; an ordering is called only where the mean is more than two
standard errors from 0, otherwise the table says "no difference shown". Directions: accuracy,
higher is better; the Frechet distance, lower is better, down to its real-vs-real floor.

    python -m dmat_core.studies.digits_report results/digits     # rewrites summary.md / summary.json
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from ..common.checkpoint import atomic_write_text

__all__ = ["paired", "verdict", "write_report"]


def paired(a, b) -> dict:
    """Mean and standard error of the per-seed differences ``a - b`` (same seeds, same order)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"mean": float(d.mean()), "se": se, "n": int(len(d))}


def verdict(diff: dict, higher_is_better: bool = True) -> str:
    """"better" / "worse" when the paired mean is over 2 standard errors from 0, else no difference."""
    if not math.isfinite(diff["se"]) or abs(diff["mean"]) <= 2 * diff["se"]:
        return "no difference shown"
    return "better" if (diff["mean"] > 0) == higher_is_better else "worse"


def _ms(v, pct=False) -> str:
    v = np.asarray(v, float)
    k = 100 if pct else 1
    se = v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return f"{k * v.mean():.1f} ± {k * se:.1f}" if pct else f"{v.mean():.2f} ± {se:.2f}"


def _d(diff, pct=False) -> str:
    k = 100 if pct else 1
    return f"{k * diff['mean']:+.1f} ± {k * diff['se']:.1f}" if pct else f"{diff['mean']:+.2f} ± {diff['se']:.2f}"


def summarise(rows: list, meta: dict) -> dict:
    by = {r["job"]: r for r in rows}
    s = meta["settings"]
    seeds = list(range(s["seeds"]))
    out = {"judge_test_acc": by["judge"]["test_acc"], "frechet_floor": by["floor"]["frechet_floor"],
           "frechet_floor_sd": by["floor"]["frechet_floor_sd"], "seeds": len(seeds), "eps": s["eps"],
           "generators": {w: {k: by[f"gen-{w}"][k] for k in ("dm_steps", "judge_acc", "judge_conf", "frechet", "n")}
                          for w in ("weak", "good")}}
    at = {arm: [by[f"at-{arm}-s{k}"] for k in seeds] for arm in ("real", "weak", "good")}
    metric = "aa_acc" if s["aa"] == "standard" else "pgd_acc"
    out["at"] = {arm: {m: [r[m] for r in rs] for m in ("clean_acc", "pgd_acc", "aa_acc")} for arm, rs in at.items()}
    out["at_diff"] = {arm: {m: paired(out["at"][arm][m], out["at"]["real"][m]) for m in ("clean_acc", metric)}
                      for arm in ("weak", "good")}
    out["robust_metric"] = metric
    dm = {}
    for p, std in s["noise"]:
        key = f"p{p:g}-s{std:g}"
        runs = {v: [by[f"dm2-{key}-{v}-seed{k}"] for k in seeds] for v in s["variants"]}
        dm[key] = {"noise_p": p, "noise_std": std,
                   "variants": {v: {m: [r[m] for r in rs] for m in ("judge_acc", "frechet", "train_seconds")}
                                for v, rs in runs.items()}}
        if p > 0 and f"dm2-clean-only-p{p:g}-seed0" in by:     # the baseline: the clean 10% only
            rs = [by[f"dm2-clean-only-p{p:g}-seed{k}"] for k in seeds]
            dm[key]["variants"]["clean-only"] = {m: [r[m] for r in rs] for m in ("judge_acc", "frechet", "train_seconds")}
            if "adversarial" in dm[key]["variants"]:
                dm[key]["adversarial_vs_clean_only"] = paired(dm[key]["variants"]["adversarial"]["frechet"],
                                                             dm[key]["variants"]["clean-only"]["frechet"])
            if "nn_ratio" in rs[0]:
                out["clean_only"] = {m: [r[m] for r in rs] for m in ("n_train", "nn_ratio", "copy_rate",
                                                                     "copy_rate_heldout")}
        base = dm[key]["variants"]["standard"]
        dm[key]["diff_vs_standard"] = {v: {"frechet": paired(dm[key]["variants"][v]["frechet"], base["frechet"]),
                                           "judge_acc": paired(dm[key]["variants"][v]["judge_acc"], base["judge_acc"])}
                                       for v in dm[key]["variants"] if v != "standard"}
    out["dm"] = dm
    return out


def _wall(meta: dict) -> str:
    """The study's wall-clock time, over every invocation that made its rows (a rerun reuses them)."""
    total, k = meta.get("wall_seconds_total", meta["wall_seconds"]), meta.get("invocations", 1)
    return f"{total / 60:.0f} min" + (f" in {k} invocations" if k > 1 else "")


def markdown(sm: dict, meta: dict) -> str:
    s = meta["settings"]
    n, metric = sm["seeds"], sm["robust_metric"]
    rob = "AutoAttack (standard)" if metric == "aa_acc" else "PGD-40 (quick mode: no AutoAttack)"
    L = [f"Written by `dmat digits-study` on {meta['date']} ({n} paired seeds; mean ± standard error; "
         f"{_wall(meta)} with {meta['workers']} workers on {meta['cpu_count']} cores).",
         "",
         f"Judge (standard SmallCNN on the real training digits): {100 * sm['judge_test_acc']:.1f}% on the 500 test "
         f"digits. Fréchet distance in its features, real vs real (500 training vs the 500 test digits), the "
         f"floor: {sm['frechet_floor']:.2f} (sd {sm['frechet_floor_sd']:.2f} over draws). Lower is better, down to "
         "the floor; it is not FID.",
         "", "**Generators** (class-conditional U-Net, Heun 18 steps; judge accuracy of the class asked for):", "",
         "| generator | DM training steps | judge accuracy | judge confidence | Fréchet (500 per set) |",
         "|---|---|---|---|---|"]
    for w in ("weak", "good"):
        g = sm["generators"][w]
        L.append(f"| {w} | {g['dm_steps']} | {100 * g['judge_acc']:.1f}% | {100 * g['judge_conf']:.1f}% | "
                 f"{g['frechet']:.2f} |")
    L += ["", f"**Experiment 1: DMs improve AT.** TRADES (beta 5) on the 1,097 real training digits, Linf eps "
          f"{sm['eps']:g}, {s['at_epochs']} epochs of the same steps in every arm; with a generator, 70% of every "
          f"batch is generated. Accuracy on the 500 test digits; robust: {rob}.", "",
          "| training data | clean | PGD-40 (CW) | AutoAttack | robust − real only (paired) | |",
          "|---|---|---|---|---|---|"]
    for arm, label in (("real", "real only"), ("weak", "real + 70% weak generator"), ("good", "real + 70% good generator")):
        a = sm["at"][arm]
        aa = _ms(a["aa_acc"], True) if a["aa_acc"][0] is not None else "–"
        if arm == "real":
            diff, v = "", ""
        else:
            d = sm["at_diff"][arm][metric]
            diff, v = _d(d, True), verdict(d)
        L.append(f"| {label} | {_ms(a['clean_acc'], True)} | {_ms(a['pgd_acc'], True)} | {aa} | {diff} | {v} |")
    L += ["", "**Experiment 2: AT improves DMs.** U-Nets trained for "
          f"{s['dm2_steps']} steps on the training digits, clean or with Gaussian noise on 90% of them; "
          "500 samples each (50 per class) against the clean test digits. Differences are paired with the "
          "standard DM of the same seed and data.", "",
          "| training data | DM | judge accuracy | Fréchet | Fréchet − standard | judge acc. − standard | |",
          "|---|---|---|---|---|---|---|"]
    for key, d in sm["dm"].items():
        data = "clean" if d["noise_p"] == 0 else f"{100 * d['noise_p']:.0f}% noisy, std {d['noise_std']:g}"
        for v, r in d["variants"].items():
            label = "standard, on the clean 10% only" if v == "clean-only" else v
            if v == "standard":
                extra = "| | | |"
            else:
                df, da = d["diff_vs_standard"][v]["frechet"], d["diff_vs_standard"][v]["judge_acc"]
                extra = f"| {_d(df)} | {_d(da, True)} | {verdict(df, higher_is_better=False)} (Fréchet) |"
            L.append(f"| {data} | {label} | {_ms(r['judge_acc'], True)} | {_ms(r['frechet'])} {extra}")
    if "clean_only" in sm:
        c = sm["clean_only"]
        L += ["", f"The baseline \"standard, on the clean 10% only\" trains on exactly the {c['n_train'][0]} digits each "
              "noisy run left clean: an oracle, told which images are noisy. How close its samples are to those "
              "training digits, beside the 500 real held-out digits (what an honest generator of the same digits "
              f"scores): median distance to the nearest training digit over the held-out digits' "
              f"{_ms(c['nn_ratio'])} (1: as far as a fresh real digit; far below 1: copies); samples closer than "
              f"a third of the held-out median {_ms(c['copy_rate'], True)}% (held-out digits: "
              f"{_ms(c['copy_rate_heldout'], True)}%)."]
        for key, d in sm["dm"].items():
            if "adversarial_vs_clean_only" in d:
                df = d["adversarial_vs_clean_only"]
                L.append(f"Adversarial − clean-only baseline, Fréchet, std {d['noise_std']:g}: {_d(df)}: "
                         f"{verdict(df, higher_is_better=False)}.")
    return "\n".join(L) + "\n"


def write_report(out) -> dict:
    """Read ``out/rows.json``; write ``summary.json`` and ``summary.md``; return the summary."""
    out = Path(out)
    data = json.loads((out / "rows.json").read_text())
    sm = summarise(data["rows"], data["meta"])
    atomic_write_text(out / "summary.json", json.dumps(sm, indent=1) + "\n")
    atomic_write_text(out / "summary.md", markdown(sm, data["meta"]))
    return sm


if __name__ == "__main__":
    write_report(sys.argv[1])
