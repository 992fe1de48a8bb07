"""Time notebooks top to bottom, as a user runs them, and keep the times in bench/notebook_times.json.

    .venv/bin/python bench/notebook_time.py                 # every notebook, its default size here
    .venv/bin/python bench/notebook_time.py 03 04           # some of them
    .venv/bin/python bench/notebook_time.py --quick         # the size the tests run (DMAT_QUICK=1)
    .venv/bin/python bench/notebook_time.py --mode digits 05 06 07 08   # the image notebooks' CPU size

The default size is what `MODE = None` gives on this machine (full for the toy notebooks 01-04,
digits for 05-08 without a GPU; the notebook prints it and this script records it). Each run is
executed as the course site executes it (tools/build_site.py: nbclient in a scratch folder, data
and runs there too, the inline backend, the widget state kept), so nothing in the repository
changes except what a notebook itself writes on purpose (the finished toy models of notebooks/models/
when they are missing). The reference for the ratio is the same notebook's quick-mode time on the
same machine, when it is in the file. Rows are keyed by notebook, size and machine; a new run of
the same key replaces the old row. bench/notebook_times.md, the table README includes, is written
from the JSON file after every notebook.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from build_site import execute, printed_size  # noqa: E402  (one way to run a notebook: the site's)

OUT = ROOT / "bench" / "notebook_times.json"
TABLE = ROOT / "bench" / "notebook_times.md"      # README includes it


def run(path: Path, quick: bool, keep: Path | None = None, mode: str | None = None) -> dict:
    """One notebook top to bottom, the way the course site runs it (tools/build_site.py's `execute`:
    a scratch folder with its own data, the inline backend, so the figures are drawn and encoded and
    are outputs of what --keep writes). Returns its row of the times file."""
    import nbformat
    env = {"DMAT_QUICK": "1"} if quick else {"DMAT_MODE": mode} if mode else {}
    nb = execute(path, env, timeout=None)
    nb.metadata["dmat_site"]["executed_by"] = "bench/notebook_time.py"
    if keep is not None:                              # the executed notebook, to read its outputs
        keep.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, keep / path.name)
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                     if o.get("output_type") == "stream")
    size, device = printed_size(nb)
    meta = nb.metadata["dmat_site"]
    return {"notebook": path.name, "size": size.split()[0], "device": device, "machine": meta["machine"],
            "seconds": meta["seconds"], "date": meta["date"], "loaded_models": text.count("loaded ")}


def markdown(rows: list) -> str:
    """One line per notebook: its measured time in each size, on each machine."""
    sizes = [(size, m) for size in ("quick", "digits", "full") for m in sorted({r["machine"] for r in rows})
             if any(r["size"] == size and r["machine"] == m for r in rows)]
    by = {(r["notebook"], r["size"], r["machine"]): r for r in rows}
    lines = ["| notebook | " + " | ".join(f"{size} size, {m}" for size, m in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for nb in sorted({r["notebook"] for r in rows}):
        cells = []
        for size, m in sizes:
            r = by.get((nb, size, m))
            cells.append("–" if r is None else f"{r['seconds'] / 60:.1f} min ({r['date']})" if r["seconds"] >= 90
                         else f"{r['seconds']:.0f} s ({r['date']})")
        lines.append(f"| {nb[:2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nMeasured by `bench/notebook_time.py` (top to bottom with nbclient; a busy " \
        "machine adds time). \"full\" on a CPU is the size a toy notebook runs by default there; 03 and 04 then " \
        "load the models committed in `notebooks/models/` (bench/RESULTS.md has their times with training). " \
        "\"digits\" is the CPU size of 05-08 (their default without a GPU); each notebook runs in its own " \
        "scratch folder, so 07 trains the digits U-Net it would otherwise take from 06 (2.6 of its minutes).\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="*", help="two-digit numbers (default: all)")
    p.add_argument("--quick", action="store_true", help="the tests' size (DMAT_QUICK=1)")
    p.add_argument("--mode", choices=["quick", "digits", "full"], help="the size (DMAT_MODE); default: the "
                   "notebook's own choice on this machine")
    p.add_argument("--keep", type=Path, help="also write the executed notebooks into this folder (with their "
                   "figures and widget state: tools/build_site.py --from DIR builds the course site from them)")
    a = p.parse_args(argv)
    paths = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    unknown = set(a.notebooks) - {q.name[:2] for q in paths}
    if unknown:
        p.error(f"no notebook numbered {sorted(unknown)}")
    rows = json.loads(OUT.read_text()) if OUT.is_file() else []
    for path in paths:
        if a.notebooks and path.name[:2] not in a.notebooks:
            continue
        row = run(path, a.quick, a.keep, a.mode)
        rows = [r for r in rows if (r["notebook"], r["size"], r["machine"]) != (row["notebook"], row["size"],
                                                                               row["machine"])] + [row]
        ref = next((r for r in rows if r["notebook"] == row["notebook"] and r["size"] == "quick"
                    and r["machine"] == row["machine"]), None)
        ratio = f" ({row['seconds'] / ref['seconds']:.1f}x its quick-mode time)" if ref and ref is not row else ""
        print(f"{row['notebook']}: {row['size']} on {row['machine']}: {row['seconds']:.0f} s{ratio}", flush=True)
        tmp = OUT.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(rows, key=lambda r: (r["notebook"], r["size"], r["machine"])), indent=1) + "\n")
        os.replace(tmp, OUT)
        TABLE.write_text(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
