"""README's package table is the layering of dmat_core: every import of every module (those
inside functions too) goes to its own row of the table or a row before it, and every module is
in the table once."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "dmat_core"


def table_rows() -> dict:
    """{module: row index} from the table under '## The package' in README.md."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## The package", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| layer")]
    out = {}
    for i, line in enumerate(rows):
        cell, depth, top = line.split("|")[2], 0, []
        for ch in cell:  # the module names, not what the parentheses after them say
            depth += (ch == "(") - (ch == ")")
            top.append(ch if depth == 0 and ch != ")" else "")
        for name in re.findall(r"`([a-z_]+/?)`", "".join(top)):
            assert name.rstrip("/") not in out, f"{name} is in two rows of README's package table"
            out[name.rstrip("/")] = i
    return out


def module_key(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    return "experiments" if rel.parts[0] == "experiments" else rel.name


def imported_modules(path: Path):
    """(line, dmat_core module) for every import in the file, at any depth."""
    in_experiments = path.parent.name == "experiments"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: '.x' is a sibling, '..x' a dmat_core module
                if in_experiments and node.level == 1:
                    yield node.lineno, "experiments"
                    continue
                parts = (node.module or "").split(".")
            elif (node.module or "").startswith("dmat_core"):
                parts = node.module.split(".")[1:]
            else:
                continue
            if parts and parts[0]:
                yield node.lineno, parts[0]
            else:
                for alias in node.names:
                    yield node.lineno, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("dmat_core."):
                    yield node.lineno, alias.name.split(".")[1]


def test_every_module_is_in_the_table():
    rows = table_rows()
    modules = {module_key(p) for p in PKG.rglob("*.py")} - {"__init__", "__main__"}
    assert not modules - set(rows), f"modules missing from README's package table: {sorted(modules - set(rows))}"
    assert not set(rows) - modules, f"README's package table names modules that do not exist: {sorted(set(rows) - modules)}"


def test_imports_go_down_the_layers_only():
    rows = table_rows()
    upward = []
    for path in sorted(PKG.rglob("*.py")):
        src = module_key(path)
        if src in ("__init__", "__main__"):
            continue
        for line, target in imported_modules(path):
            if target in rows and rows[target] > rows[src]:
                upward.append(f"{path.relative_to(ROOT)}:{line} {src} (row {rows[src]}) imports {target} (row {rows[target]})")
    assert not upward, "imports against the layering of README's package table:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    """The parser finds imports inside functions and relative ones, so the check can fail."""
    f = tmp_path / "toys.py"
    f.write_text("def f():\n    from .at_train import train_at\n    from dmat_core.unet import build_image_denoiser\n")
    got = [t for _, t in imported_modules(f)]
    assert got == ["at_train", "unet"]
