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


def module_name(path: Path) -> str:
    """Dotted name: dmat_core.toys, dmat_core.experiments.demo (a file the tests write elsewhere
    is read as a module of dmat_core)."""
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else Path("dmat_core") / path.name
    return ".".join(rel.with_suffix("").parts)


def imported_names(path: Path):
    """(line, dotted dmat_core module) for every import in the file, at any depth; ``from pkg
    import name`` gives pkg.name when that is a module of the package, else pkg."""
    package = module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("dmat_core"):
                mod = node.module
            else:
                continue
            subs = [f"{mod}.{a.name}" for a in node.names if (ROOT / f"{mod}.{a.name}".replace(".", "/")).with_suffix(".py").is_file()]
            for target in subs or [mod]:
                yield node.lineno, target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("dmat_core."):
                    yield node.lineno, alias.name


def imported_modules(path: Path):
    """(line, row key of README's table) for every import of a dmat_core module in the file."""
    for line, name in imported_names(path):
        parts = name.split(".")
        if len(parts) > 1:
            yield line, parts[1]


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
    """Module by module (inside experiments/ too), imports at any depth form no cycle."""
    graph = {module_name(p): {t for _, t in imported_names(p)} for p in PKG.rglob("*.py")}
    graph = {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
