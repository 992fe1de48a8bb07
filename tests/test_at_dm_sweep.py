"""The AT-for-DMs sweep: its grid, its typed settings, and (quick size, trimmed) one run end to end:
a folder per setting, the standard model and the baselines shared by every floor, the figure and the
tables; a second run reuses everything."""
import json

import pytest

from dmat_core.common.settings import SettingsError
from dmat_core.studies import at_dm_sweep as sweep


def test_the_full_grid_is_the_issues():
    sc = sweep.sweep_config()
    grid = sweep.settings_grid(sc)
    assert len(grid) == 5 * 3 * 3 and sc.seeds == 10 and "invariance" not in sc.variants and "adversarial-true-noise" not in sc.variants
    assert {g["floor"] for g in grid} == {0, 0.03, 0.06, 0.125, 0.25}
    assert {g["s"] for g in grid} == {0, 0.1, 0.2} and {g["sigma_min"] for g in grid} == {2e-2, 2e-3, 2e-4}
    g = next(g for g in grid if g["floor"] == 0.06 and g["s"] == 0.1 and g["sigma_min"] == 2e-4)
    assert g["folder"] == "s0.1/smin0.0002/floor0.06"
    assert g["study"]["at"] == {"r_min": 0.06} and g["study"]["preset"] == "inlier-ring8"
    assert g["study"]["s"] == 0.1 and g["study"]["sampler_sigma_min"] == 2e-4 and g["study"]["seeds"] == 10
    assert len({g["folder"] for g in grid}) == len(grid)


@pytest.mark.parametrize("bad, msg", [(dict(seeds=1), "seeds=1: seeds must be an integer >= 2"),
                                      (dict(floors=[-0.1]), "floors must be distinct numbers >= 0"),
                                      (dict(floors=[]), "floors"),
                                      (dict(sigma_mins=[0.0]), "sigma_mins must be distinct numbers in (0, 80)"),
                                      (dict(variants=["adversarial"]), "variants must include standard"),
                                      (dict(variants=["trades"]), "variants.0"),
                                      (dict(dist="ring9"), "dist"), (dict(width=3), "unknown setting")])
def test_bad_settings_are_one_clear_line(bad, msg):
    with pytest.raises(SettingsError) as e:
        sweep.sweep_config(**bad)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_quick_sweep_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "QUICK_STUDY", {**sweep.QUICK_STUDY, "steps": 10, "shrink_sigmas": [0.0, 0.2]})
    sc = sweep.sweep_config(True, floors=[0.0, 0.25], sigma_mins=[0.002],
                            variants=["standard", "adversarial", "tweedie-shrinkage", "ideal-standard"])
    res = sweep.run_sweep(tmp_path, sc, progress=False)
    for f in ("sweep.json", "sweep.md", "findings.md", "sweep.png", "sweep_sw2.png", "s0.2/smin0.002/floor0/results.json",
              "s0.2/smin0.002/floor0.25/table.md"):
        assert (tmp_path / f).is_file(), f
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert [r["floor"] for r in rows] == [0.0, 0.25]
    ll = [r["heldout_ll"]["arms"] for r in rows]
    assert ll[0]["standard"] == ll[1]["standard"] and ll[0]["tweedie-shrinkage"] == ll[1]["tweedie-shrinkage"]
    assert ll[0]["adversarial"] != ll[1]["adversarial"]                 # the floor changes AT alone
    assert all(v[2] == 2 for v in ll[0].values())                       # n seeds
    assert rows[0]["heldout_ll"]["verdict"]["arm"] == "adversarial"
    table = (tmp_path / "sweep.md").read_text()
    assert "| s | sigma_min | floor | right |" in table and "(a) tweedie-shrinkage" in table and "SW2 / floor" in table
    # the findings agree with the study folder they are read from, arm by arm
    from dmat_core.studies.at_dm_summary import arm_verdict, paired_cell
    first = json.loads((tmp_path / "s0.2/smin0.002/floor0/results.json").read_text())
    v = arm_verdict(first, "adversarial", "heldout_ll", "exact")
    found = (tmp_path / "findings.md").read_text()
    assert f"| 0.2 | 0 | {rows[0]['heldout_ll']['right']:.3f} | adversarial | {v['mean']:.3f} ± {v['se']:.3f} | " \
           f"{paired_cell(v['vs_standard'])} |" in found
    assert "| s | sigma_min | floor | adversarial |" in found
    before = found
    (tmp_path / "findings.md").unlink()
    (tmp_path / "sweep.png").unlink()
    sweep.render(tmp_path)                                              # again from the files, nothing run
    assert (tmp_path / "findings.md").read_text() == before and (tmp_path / "sweep.png").is_file()
    second = json.loads((tmp_path / "s0.2/smin0.002/floor0.25/results.json").read_text())
    assert second["meta"]["from_cache"] == 2 * 3 and second["meta"]["computed"] == 2   # only AT trained again
    again = sweep.run_sweep(tmp_path, sc, progress=False)
    assert again["rows"] == res["rows"]
    meta = json.loads((tmp_path / "s0.2/smin0.002/floor0/results.json").read_text())["meta"]
    assert meta["computed"] == 0 and meta["reused"] == 2 * 4
    # --collect: the same sweep.json from the folders alone (no samples.npz, nothing run) ...
    for f in tmp_path.glob("s*/**/samples.npz"):
        f.unlink()
    written = (tmp_path / "sweep.json").read_text()
    (tmp_path / "sweep.json").unlink()
    assert sweep.collect(tmp_path, sc, progress=False)["rows"] == res["rows"]
    assert (tmp_path / "sweep.json").read_text() == written
    # ... and a grid point with no folder, or a folder of another setting, is an error naming it; nothing written
    (tmp_path / "sweep.json").unlink()
    with pytest.raises(FileNotFoundError, match="smin0.02/floor0/results.json"):
        sweep.collect(tmp_path, sweep.sweep_config(True, floors=[0.0, 0.25], sigma_mins=[0.002, 0.02],
                                                   variants=sc.variants), progress=False)
    path = tmp_path / "s0.2/smin0.002/floor0.25/results.json"
    moved = json.loads(path.read_text())
    moved["config"]["s"] = 0.1
    path.write_text(json.dumps(moved))
    with pytest.raises(ValueError, match=r"floor0.25/results.json is not this sweep's setting s0.2/smin0.002/floor0.25 "
                                         r"\(s: 0.1 there, 0.2 in the sweep\)"):
        sweep.collect(tmp_path, sc, progress=False)
    assert not (tmp_path / "sweep.json").exists()
