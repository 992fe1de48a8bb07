"""The folders of dmat_core are its layers: ``dmat_core.LAYERS`` names the subpackages bottom to
top, every import of every module (those inside functions too) goes to its own subpackage or one
before it, no modules import each other in a cycle, and README's package table lists the same
folders in the same order with exactly the modules each holds."""
import ast
import re
from pathlib import Path

import dmat_core

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "dmat_core"
LAYERS = dmat_core.LAYERS


def modules(folder: Path):
    return sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")


def layer_of(path: Path) -> str:
    """The subpackage a module belongs to (None for dmat_core/__init__.py and __main__.py)."""
    rel = path.relative_to(PKG) if path.is_relative_to(PKG) else Path(path.name)
    return rel.parts[0] if len(rel.parts) > 1 else None


def module_name(path: Path) -> str:
    """Dotted name: dmat_core.toys.mixtures (a file the tests write elsewhere is read as a module
    of dmat_core, in the folder its parent directory names)."""
    if path.is_relative_to(ROOT):
        rel = path.relative_to(ROOT)
    else:
        rel = Path("dmat_core") / path.parent.name / path.name
    return ".".join(rel.with_suffix("").parts)


def imported_names(path: Path):
    """(line, dotted dmat_core module) for every import in the file, at any depth; ``from pkg
    import name`` gives pkg.name when that is a module of the package, else pkg."""
    package = module_name(path).rsplit(".", 1)[0]
    if path.name == "__init__.py":
        package = module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("dmat_core"):
                mod = node.module
            else:
                continue
            subs = [f"{mod}.{a.name}" for a in node.names
                    if (ROOT / f"{mod}.{a.name}".replace(".", "/")).with_suffix(".py").is_file()]
            for target in subs or [mod]:
                yield node.lineno, target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("dmat_core."):
                    yield node.lineno, alias.name


def imported_layers(path: Path):
    """(line, subpackage) for every import of a dmat_core module in the file."""
    for line, name in imported_names(path):
        parts = name.split(".")
        if len(parts) > 1:
            yield line, parts[1]


def table_rows() -> list:
    """[(folder, [modules])] from the table under '## The package' in README.md, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## The package", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("| layer") or line.startswith("|---"):
            continue
        cells = line.split("|")
        folder = re.findall(r"`([a-z_]+)/`", cells[1])
        cell, depth, top = cells[2], 0, []
        for ch in cell:  # the module names, not what the parentheses after them say
            depth += (ch == "(") - (ch == ")")
            top.append(ch if depth == 0 and ch != ")" else "")
        rows.append((folder[0] if folder else None, re.findall(r"`([a-z_0-9]+)`", "".join(top))))
    return rows


def test_layers_are_the_folders():
    folders = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").is_file())
    assert sorted(LAYERS) == folders, f"dmat_core.LAYERS {LAYERS} is not the set of subpackages {folders}"
    stray = [p.name for p in PKG.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert not stray, f"modules outside every layer folder: {stray}"
    assert not list(PKG.glob("*/*/*.py")), "layers are one folder deep"


def test_readme_table_is_the_layering():
    rows = table_rows()
    assert [f for f, _ in rows] == list(LAYERS), \
        f"README's package table lists {[f for f, _ in rows]}, the package {list(LAYERS)}"
    for folder, listed in rows:
        real = modules(PKG / folder)
        assert sorted(listed) == real, f"README's row for {folder}/ lists {sorted(listed)}, the folder holds {real}"


def test_init_docstrings_name_their_layer():
    top = PKG / "__init__.py"
    doc = ast.get_docstring(ast.parse(top.read_text()))
    assert [line.split()[0] for line in doc.splitlines() if line.startswith("    ")] == list(LAYERS)
    for i, folder in enumerate(LAYERS):
        sub = ast.get_docstring(ast.parse((PKG / folder / "__init__.py").read_text()))
        assert sub and sub.startswith(f"Layer {i} "), f"dmat_core/{folder}/__init__.py must say 'Layer {i}'"
        for m in modules(PKG / folder):
            assert f"``{m}``" in sub, f"dmat_core/{folder}/__init__.py does not describe {m}"


def upward_imports(paths):
    out = []
    for path in paths:
        src = layer_of(path)
        if src is None:
            continue
        for line, target in imported_layers(path):
            if target in LAYERS and LAYERS.index(target) > LAYERS.index(src):
                out.append(f"{path}:{line} {src} (layer {LAYERS.index(src)}) imports {target} "
                           f"(layer {LAYERS.index(target)})")
    return out


def test_imports_go_down_the_layers_only():
    upward = upward_imports(sorted(PKG.rglob("*.py")))
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    """The parser finds imports inside functions and relative ones, so the check can fail."""
    f = tmp_path / "toys" / "mixtures.py"
    f.parent.mkdir()
    f.write_text("def f():\n    from ..robust.train import train_at\n    from dmat_core.images.unet import x\n"
                 "    from .metrics import y\n")
    got = [t for _, t in imported_names(f)]
    assert got == ["dmat_core.robust.train", "dmat_core.images.unet", "dmat_core.toys.metrics"]
    assert [t for _, t in imported_layers(f)] == ["robust", "images", "toys"]


def find_cycles(graph: dict) -> list:
    """Every cycle a depth-first search meets in {module: set of imported modules}."""
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return cycles


def test_no_import_cycles():
    """Module by module (inside each layer too), imports at any depth form no cycle."""
    graph = {module_name(p): {t for _, t in imported_names(p)} for p in PKG.rglob("*.py")}
    graph = {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]



def test_no_class_name_twice():
    """One name, one class: a student who greps for a class finds one definition."""
    seen, twice = {}, []
    for p in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                if node.name in seen:
                    twice.append(f"{node.name}: {seen[node.name]} and {p.relative_to(ROOT)}")
                seen.setdefault(node.name, p.relative_to(ROOT))
    assert not twice, "classes defined twice:\n" + "\n".join(twice)


def test_long_modules_say_why():
    """A module of more than about 300 lines says at its top (docstring, or a comment right after it
    where the docstring is a command's --help text) why it is one module."""
    long = []
    for p in sorted(PKG.rglob("*.py")):
        text = p.read_text()
        if len(text.splitlines()) > 310 and "Size:" not in "\n".join(text.splitlines()[:60]):
            long.append(f"{p.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    assert not long, "modules over 300 lines without a 'Size:' reason at their top:\n" + "\n".join(long)
