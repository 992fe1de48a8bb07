"""The cross-setting summary of the AT-for-DMs study, and when it may say that AT works.

Every setting is read on its key measure *beside its right value* (what fresh true samples score,
the ideal 0 or 1, or "low" for a divergence; a one-sided measure read as "lower is better" is won
by collapse) and on measures collapse cannot win (:data:`PROPER`: the held-out likelihood, a proper
score; sliced W2 over its noise floor, a divergence; the spread of the modes). Orderings are paired
by seed (same data, same latents, same held-out points): the difference of distances to the right
value, called only beyond two standard errors.

**When AT works.** An AT arm "works" on a measure only where it is closer to the right value than
standard training *and every baseline* of :mod:`~dmat_core.studies.at_dm_baselines` ((a) Tweedie
shrinkage, (b) early stopping, (c) the ideal standard model, not asked where it is the truth
itself or has no closed form: :func:`required_opponents`), each beyond two paired standard
errors (:func:`at_verdict`); a setting counts as one where AT works only if it does so on the
setting's proper score (:func:`deciding_measure`: the held-out likelihood where it is measured,
else SW2 / floor).

    python -m dmat_core.studies.at_dm_report summary results/at_dm
"""
# Size: about 360 lines on purpose: the measures' right values, the paired verdicts and the three
# tables built on them (summary, findings, claims) read the same rules and belong together.
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .at_dm_setup import ARMS, BASELINES, DEFAULT_ARMS, migrate_results

# (preset, key, label, right value). The right value is "1", "0", "low" (a divergence), "exact" (the
# true density's value on the same points: key + "_exact" of the runs) or "truth": the value fresh
# true samples score.
KEY_MEASURES = [("clean-ring8", "off_mode_mass", "off-mode mass", "truth"),
                ("inlier-ring8", "nll_gap", "NLL - H", "truth"),
                ("inlier-ring8", "off_mode_mass", "off-mode mass", "truth"),
                ("outliers-ring8", "off_mode_mass", "off-mode mass", "truth"),
                ("plane3d-offplane", "residual_rms", "residual RMS", "0"),
                ("subspace-inlier", "residual_rms", "residual RMS", "0"),
                # memorization, by the train - held-out likelihood gap (its right value: the same gap
                # under the true density), which narrowing the modes does not win; the tables add the
                # nearest-training-point ratio against fresh samples of the same spread
                ("memorization", "ll_gap", "train - held-out log-likelihood", "exact"),
                # the strongest attack, against the same model and latents unattacked: the share of
                # samples it moves to another mode (one-sided: read beside the spread and the held-out
                # likelihood, as every row is), and SW2 / floor under it. The damage to SW2 / floor is in
                # the tables: an attack that swaps modes leaves the law, hence SW2, almost unchanged
                ("trajectory-attack", "attack_switch", "mode switches under the strongest attack", "0"),
                ("trajectory-attack", "attack_sw2", "SW2 / floor under the strongest attack", "low")]
PROPER = [("heldout_ll", "held-out log-likelihood (PF-ODE)", "exact"), ("sw2_ratio", "SW2 / floor", "low"),
          ("spread_ratio", "spread", "1")]
REFERENCES = {"exact denoiser of the training distribution": "ideal: data distribution (seed 0)",
              "exact denoiser of the training set": "ideal: training set",
              "training set": "training set"}
LABELS = {"tweedie-shrinkage": "(a) tweedie-shrinkage", "early-stopping": "(b) early-stopping",
          "ideal-standard": "(c) ideal-standard"}
AT_ARMS = tuple(a for a in DEFAULT_ARMS if a in ARMS and ARMS[a]["variant"] != "standard")


def headline_rows(preset: str) -> list:
    """[(key, label, right value)] of a setting: its key measures, then the proper ones."""
    return [(k, label, right) for p, k, label, right in KEY_MEASURES if p == preset] + PROPER


def attack_damage(m: dict, budget: float):
    """SW2 / floor under the attack of `budget` minus the same unattacked (budget 0, measured alike;
    else the model's own sampler), from one run's metrics; None where that budget was not run."""
    a = m.get(f"attack{budget:g}_sw2_ratio")
    return None if a is None else a - m.get("attack0_sw2_ratio", m["sw2_ratio"])


def attack_budgets(m: dict, suffix: str) -> list:
    """The attack budgets of one run's metrics that measured `suffix` (keys attack<budget><suffix>), sorted."""
    return sorted(float(k[6:-len(suffix)]) for k in m if k.startswith("attack") and k.endswith(suffix))


def run_values(r: dict, arm: str, key: str) -> dict:
    """{seed: value} of one measure for one arm (attack_sw2: SW2 / floor at the largest budget;
    attack_damage: that minus the same at budget 0, the same model and latents unattacked and
    measured alike; attack_switch: the share of samples the largest budget moves to another mode)."""
    out = {}
    for run in r["runs"]:
        if run["variant"] != arm:
            continue
        m = run["metrics"]
        if key in ("attack_sw2", "attack_damage", "attack_switch"):
            budgets = attack_budgets(m, "_sw2_ratio")
            if not budgets:
                continue
            v = {"attack_switch": m.get(f"attack{budgets[-1]:g}_mode_switch"),
                 "attack_damage": attack_damage(m, budgets[-1]),
                 "attack_sw2": m[f"attack{budgets[-1]:g}_sw2_ratio"]}[key]
        else:
            v = m.get(key)
        if v is not None:
            out[run["seed"]] = float(v)
    return out


def target(r: dict, key: str, right: str) -> float:
    """The right value of a measure in one study (NaN where the study has none)."""
    if right == "truth":
        return float(r["reference"].get("true samples", {}).get(key, float("nan")))
    if right == "exact":        # the same points under the true density (heldout_ll_exact, ll_gap_exact)
        vals = [run["metrics"][f"{key}_exact"] for run in r["runs"] if f"{key}_exact" in run["metrics"]]
        return float(np.mean(vals)) if vals else float("nan")
    return 0.0 if right == "low" else float(right)


def paired(r: dict, arm: str, base: str, key: str, right: str):
    """Paired (same seed) difference of |value - right value| between `arm` and `base`: negative
    means `arm` is closer to the right value. Returns (mean, standard error, n) or None."""
    a, b = run_values(r, arm, key), run_values(r, base, key)
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    t = target(r, key, right)
    d = np.array([abs(a[s] - t) - abs(b[s] - t) for s in seeds])
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))), len(d)


def _call(mean: float, se: float) -> str:
    return ("closer" if mean < 0 else "farther") if abs(mean) > 2 * se else "no difference shown"


def required_opponents(r: dict) -> tuple:
    """What an AT arm must beat: standard training and every baseline, but the ideal standard model
    where it has no closed form (uniform outliers) or where it is the truth itself (clean data, or
    noise of std 0 or share 0): a ceiling no model passes in expectation, so requiring it would make
    every verdict "no" whatever AT did; it stays in the tables as a reference row."""
    cfg = r.get("config") or {}
    corruption = cfg.get("corruption")
    is_truth = corruption == "clean" or (corruption in ("inlier", "offplane")
                                        and (cfg.get("s") == 0 or cfg.get("p") == 0))
    drop = corruption == "outlier" or is_truth
    return ("standard", *(b for b in BASELINES if not (drop and b == "ideal-standard")))


def at_verdict(r: dict, key: str, right: str):
    """The AT arm closest to the right value on one measure (by its mean), against standard training
    and every baseline (:func:`required_opponents`), paired by seed: (arm, {opponent: (mean, se, n)
    or None where it was not run}, works), where `works` is True only if the arm is closer than every
    one of them beyond two standard errors (a baseline that was not run is not beaten). None where
    the study has no AT arm, no standard arm or no right value."""
    t = target(r, key, right)
    closeness = {a: abs(np.mean(list(v.values())) - t) for a in AT_ARMS if (v := run_values(r, a, key))}
    if not closeness or not run_values(r, "standard", key) or not math.isfinite(t):
        return None
    best = min(closeness, key=closeness.get)
    diffs = {b: paired(r, best, b, key, right) for b in required_opponents(r)}
    works = all(d is not None and d[0] < 0 and abs(d[0]) > 2 * d[1] for d in diffs.values())
    return best, diffs, works


def deciding_measure(r: dict):
    """(key, label, right) of the proper score a setting is judged on: the held-out likelihood where
    the study measured it, else SW2 / floor."""
    return PROPER[0] if any(run_values(r, a, "heldout_ll") for a in ("standard", *AT_ARMS)) else PROPER[1]


def _verdict_cell(v) -> str:
    if v is None:
        return ""
    best, diffs, works = v
    if works:
        worst = max(diffs, key=lambda b: diffs[b][0])
        return f"yes: {best} beats all ({worst} by {diffs[worst][0]:+.3f} ± {diffs[worst][1]:.3f})"
    lost = [b for b, d in diffs.items() if d is None or not (d[0] < 0 and abs(d[0]) > 2 * d[1])]
    shown = ", ".join(f"{b} {diffs[b][0]:+.3f} ± {diffs[b][1]:.3f}" if diffs[b] else f"{b} (not run)"
                      for b in lost)
    return f"no: {best} vs {shown}"


def load_studies(root: str | Path, presets) -> dict:
    """{preset: results} of the study folders `root`/<preset> that hold results (migrated)."""
    root = Path(root)
    return {p: migrate_results(json.loads((root / p / "results.json").read_text()))
            for p in presets if (root / p / "results.json").is_file()}


def summary_table(root: str | Path) -> str:
    """Per preset under `root` (one study folder per preset): its key measures beside the proper
    ones, mean ± std over seeds per arm and baseline, the right value of each, the reference rows;
    per row the AT arm closest to the right value against standard training, and whether it beats
    standard training and every baseline (paired, beyond two standard errors); below the table,
    the settings where AT works on their proper score and those where it does not."""
    studies = load_studies(root, dict.fromkeys(k[0] for k in KEY_MEASURES))
    present = {a for r in studies.values() for a in r["summary"]}
    arms = [a for a in ("standard", *AT_ARMS, *BASELINES) if a in present]
    per_seed_ideal = "ideal-standard" in present
    refs = [n for n in REFERENCES if any(n in r["reference"] for r in studies.values())
            and not (per_seed_ideal and n == "exact denoiser of the training distribution")]
    lines = ["| setting | measure | right value | " + " | ".join([LABELS.get(a, a) for a in arms] + [REFERENCES[n] for n in refs])
             + " | closest AT arm vs standard (paired) | AT beats standard and every baseline? |",
             "|---" * (5 + len(arms) + len(refs)) + "|"]
    works, fails = [], []
    for preset, r in studies.items():
        for key, label, right in headline_rows(preset):
            if not any(run_values(r, a, key) for a in arms):
                continue                    # e.g. no spread for data on a plane or subspace
            t = target(r, key, right)
            cells = []
            for a in arms:
                v = np.array(list(run_values(r, a, key).values()))
                cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}" if len(v) else "")
            for name in refs:
                v = r["reference"].get(name, {}).get(key)
                cells.append("" if v is None else f"{v:.3f}")
            v = at_verdict(r, key, right)
            vs_standard = ""
            if v is not None and v[1]["standard"] is not None:
                mean, se, n = v[1]["standard"]
                vs_standard = f"{v[0]}: {mean:+.3f} ± {se:.3f} ({_call(mean, se)}, {n} seeds)"
            shown = (f"{t:.3f}" if right in ("truth", "exact") and math.isfinite(t) else
                     "low (1 = noise floor)" if right == "low" else right)
            lines.append(f"| {preset} | {label} | {shown} | " + " | ".join(cells)
                         + f" | {vs_standard} | {_verdict_cell(v)} |")
        key, label, right = deciding_measure(r)
        v = at_verdict(r, key, right)
        (works if v is not None and v[2] else fails).append(f"{preset} ({label})")
    n = {r["meta"]["seeds"] for r in studies.values()}
    lines += ["", f"**AT works** (an AT arm closer to the right value than standard training and every "
              f"baseline, each beyond 2 paired standard errors, on the setting's proper score) in: "
              f"{', '.join(works) or 'none'}; **not shown** in: {', '.join(fails) or 'none'}.", "",
              f"Mean ± std over {'/'.join(map(str, sorted(n)))} seeds, against the clean "
              "distribution. *right value*: what fresh true samples score (*truth*), the truth's held-out "
              "likelihood, the ideal (1 or 0), or *low* for a divergence; a one-sided measure read as "
              "\"lower is better\" is won by collapse, so every setting also shows the held-out likelihood "
              "(a proper score), SW2 / floor (a divergence: 1 is as close as a second true sample set) and "
              "the spread (1 = modes as wide as the truth; below 1 = collapse). Baselines, built on standard "
              "training alone: (a) the standard model sampled with the PF-ODE stopped at a sigma_s tuned on "
              "validation points and finished with D(x, sigma_s); (b) its EMA checkpoint chosen on "
              "validation points; (c) the exact denoiser of the corrupted training distribution (what "
              "standard training converges to with unlimited data), per seed. Paired columns: difference "
              "of distances to the right value (negative = the AT arm closer), same seeds, called only "
              "beyond 2 standard errors. `fgsm-at-loss` is this project's reading (FGSM on the AT loss, "
              "Madry-style), not an arm of the paper. Full tables: `results/at_dm/<setting>/table.md`."]
    return "\n".join(lines)


def arm_verdict(r: dict, arm: str, key: str, right: str):
    """One AT arm of one study on one measure: {"mean", "se", "n"} over seeds, its paired difference
    with standard training ("vs_standard") and with the hardest baseline to beat, the one with the
    largest paired difference ("hardest", "vs_hardest"; None where no baseline ran), each (mean, se,
    n) or None, and "beats": closer than standard training and every baseline beyond two standard
    errors. None where the arm has fewer than two seeds."""
    v = np.array(list(run_values(r, arm, key).values()))
    if len(v) < 2:
        return None
    std = paired(r, arm, "standard", key, right)
    bases = {b: paired(r, arm, b, key, right) for b in required_opponents(r) if b != "standard"}
    ran = {b: d for b, d in bases.items() if d is not None}
    hard = max(ran, key=lambda b: ran[b][0]) if ran else None
    beats = bool(std) and len(ran) == len(bases) and all(
        d[0] < 0 and abs(d[0]) > 2 * d[1] for d in (std, *ran.values()))
    return {"mean": float(v.mean()), "se": float(v.std(ddof=1) / math.sqrt(len(v))), "n": len(v),
            "vs_standard": std, "hardest": hard, "vs_hardest": ran.get(hard), "beats": beats}


def paired_cell(d) -> str:
    """A paired difference as the tables print it: mean ± standard error (the call)."""
    return f"{d[0]:+.3f} ± {d[1]:.3f} ({_call(d[0], d[1])})" if d else "not run"


def _arm_rows(preset: str, r: dict, key: str, label: str, right: str, beside=None) -> list:
    """The rows of :func:`findings_table` / :func:`claims_table` for one setting and one measure;
    `beside`: (key, right) of a measure whose paired difference with standard training ends each row."""
    t = target(r, key, right)
    shown = f"{t:.3f}" if right in ("truth", "exact") else right
    rows = []
    for a in AT_ARMS:
        v = arm_verdict(r, a, key, right)
        if v is None:
            continue
        hard = (f"{LABELS.get(v['hardest'], v['hardest'])}: {paired_cell(v['vs_hardest'])}"
                if v["hardest"] else "none run")
        rows.append(f"| {preset} ({r['meta']['seeds']} seeds) | {label} ({shown}) | {a} | "
                    f"{v['mean']:.3f} ± {v['se']:.3f} | {paired_cell(v['vs_standard'])} | {hard} "
                    f"| {'**yes**' if v['beats'] else 'no'} |"
                    + (f" {paired_cell(paired(r, a, 'standard', *beside))} |" if beside else ""))
    return rows


_FINDINGS_HEAD = ["| setting | {} (right value) | AT arm | arm: mean ± s.e. | vs standard | "
                  "vs the hardest baseline | beats standard and every baseline |", "|---" * 7 + "|"]


def findings_table(root: str | Path, presets=None) -> str:
    """Markdown, one row per (setting, AT arm), on the setting's proper score (:func:`deciding_measure`):
    the arm's mean ± standard error over seeds, its paired difference with standard training and with
    the hardest baseline to beat (:func:`arm_verdict`), each called (closer / farther / no difference
    shown, at two standard errors), and whether it beats standard training and every baseline.
    Every number comes from the study folders under `root` (`presets`: only these)."""
    studies = load_studies(root, presets or dict.fromkeys(k[0] for k in KEY_MEASURES))
    lines = [_FINDINGS_HEAD[0].format("proper score"), _FINDINGS_HEAD[1]]
    for preset, r in studies.items():
        lines += _arm_rows(preset, r, *deciding_measure(r))
    return "\n".join(lines)


def claim_measures(preset: str, r: dict) -> list:
    """[(key, label, right value)] of the claim a setting tests beyond fidelity: memorization by the
    train - held-out likelihood gap against the true density's own; the trajectory attack at every
    budget by the share of samples moved to another mode (right value 0), and its damage to SW2 /
    floor under the strongest attack against the same model unattacked (0: no damage)."""
    if preset == "memorization":
        return [(k, label, right) for p, k, label, right in KEY_MEASURES if p == preset]
    budgets = sorted({b for run in r["runs"] for b in attack_budgets(run["metrics"], "_mode_switch")} - {0.0})
    if not budgets:
        return []
    return ([(f"attack{b:g}_mode_switch", f"mode switches, budget {b:g}", "0") for b in budgets]
            + [("attack_damage", f"SW2 / floor damage, budget {budgets[-1]:g}", "0")])


def claims_table(root: str | Path, presets=("memorization", "trajectory-attack")) -> str:
    """Markdown like :func:`findings_table`, on each setting's own claim (:func:`claim_measures`).
    Mode switches are one-sided (a model that puts every sample in one mode switches none), and a
    model can copy less by fitting worse, so each row ends with the same arm's proper score
    (:func:`deciding_measure`) against standard training, as in :func:`findings_table`."""
    studies = load_studies(root, presets)
    lines = [_FINDINGS_HEAD[0].format("claim's measure") + " its proper score vs standard |",
             _FINDINGS_HEAD[1] + "---|"]
    for preset, r in studies.items():
        proper_key, _, proper_right = deciding_measure(r)
        for key, label, right in claim_measures(preset, r):
            lines += _arm_rows(preset, r, key, label, right, beside=(proper_key, proper_right))
    return "\n".join(lines) if len(lines) > 2 else ""


def findings_markdown(root: str | Path) -> str:
    """findings.md: :func:`findings_table`, then :func:`claims_table` where a claim's setting was run."""
    text = findings_table(root) + "\n"
    claims = claims_table(root)
    if claims:
        text += ("\nThe claims beyond fidelity, on their own measures. A model that puts every sample in one "
                 "mode switches none, and one that fits worse copies less, so each row ends with the arm's "
                 "proper score against standard training; a win there with a loss on the proper score is "
                 "no win.\n\n" + claims + "\n")
    return text


def verdict_table(r: dict) -> str:
    """Markdown: on each proper measure of one study, every AT arm against standard training and
    each baseline, paired by seed (difference of distances to the right value; negative = the AT
    arm closer), and whether it beats them all beyond two standard errors."""
    opponents = list(required_opponents(r))
    arms = [a for a in AT_ARMS if a in r["summary"]]
    if not arms or "standard" not in r["summary"]:
        return ""
    lines = ["| measure | AT arm | " + " | ".join(f"vs {LABELS.get(b, b)}" for b in opponents)
             + " | beats all |", "|---" * (3 + len(opponents)) + "|"]
    for key, label, right in PROPER:
        if not run_values(r, "standard", key):
            continue
        for a in arms:
            diffs = [paired(r, a, b, key, right) for b in opponents]
            cells = [f"{d[0]:+.3f} ± {d[1]:.3f}" if d else "n/a" for d in diffs]
            beats = all(d is not None and d[0] < 0 and abs(d[0]) > 2 * d[1] for d in diffs)
            lines.append(f"| {label} | {a} | " + " | ".join(cells) + f" | {'yes' if beats else 'no'} |")
    return "\n".join(lines)


__all__ = ["KEY_MEASURES", "PROPER", "AT_ARMS", "headline_rows", "attack_damage", "run_values", "target", "paired",
           "required_opponents", "at_verdict", "deciding_measure", "summary_table", "verdict_table", "findings_table",
           "claims_table", "claim_measures", "findings_markdown", "arm_verdict", "paired_cell", "load_studies"]
