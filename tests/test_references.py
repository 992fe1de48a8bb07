"""Every reference in the repository points at something that exists.

- no file cites the out-of-repository reference file that ``docs/science.md`` replaced;
- ``docs/science.md section N`` (or ``§N``) names a section the page has;
- a path in backticks or in a markdown link (``dmat_core/...py``, ``notebooks/NN_*.ipynb``,
  ``docs/*.md``, ``bench/*.py``, ``tools/*.py``, ``results/...``) exists;
- a dotted name ``dmat_core.x.y`` is a module or a top-level name of one (read by ``ast``,
  nothing is imported);
- a module docstring that says "notebook NN" (or "notebooks 02-04", "notebooks 03 and 04")
  names notebooks that import that module.

Each checker is a plain function of text, so the last tests feed it a bad example and
check that it is caught. Fast: no dmat_core, torch or nbformat import.
"""
import ast
import functools
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve()
DOCS = ROOT / "docs" / "science.md"
OLD_REFERENCE = "SCIENCE" + ".md"      # the out-of-repository file docs/science.md replaced


# ----------------------------------------------------------------------------- the files
def scanned_files() -> list:
    """The files whose references are checked (this file excluded: it holds bad examples)."""
    globs = ["dmat_core/**/*.py", "notebooks/*.ipynb", "README.md", "docs/*.md",
             "results/**/*.md", "bench/*.py", "tools/*.py", "tests/*.py"]
    files = {p.resolve() for g in globs for p in ROOT.glob(g)}
    return sorted(p for p in files if p != SELF)


def cells(path: Path) -> list:
    """[(cell_type, source)] of a notebook."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    return [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]


def text_of(path: Path) -> str:
    """All the text of a file; for a notebook its cells' sources, one after the other."""
    if path.suffix == ".ipynb":
        return "\n\n".join(src for _, src in cells(path))
    return path.read_text(encoding="utf-8")


def markdown_of(path: Path) -> str:
    """The markdown of a file ('' for Python, where `a[i](x)` is code, not a link)."""
    if path.suffix == ".ipynb":
        return "\n\n".join(src for kind, src in cells(path) if kind == "markdown")
    return path.read_text(encoding="utf-8") if path.suffix == ".md" else ""


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# ----------------------------------------------------------------------------- checkers
def old_reference_mentions(text: str) -> list:
    """Lines that cite the old reference file."""
    return [line.strip() for line in text.splitlines() if OLD_REFERENCE in line]


def docs_sections(text: str) -> set:
    """Section numbers of the page: headings '## N. Title'."""
    return {int(n) for n in re.findall(r"^## (\d+)\. ", text, flags=re.M)}


_NUMS = r"\d+(?:\s*(?:,|and|&|or|-|–)\s*\d+)*"
_SECTION_REF = re.compile(r"docs/science\.md`?(?:\]\([^)]*\))?,?\s*(?:sections?|§+)\s*(" + _NUMS + ")",
                          re.I)


def _numbers(spec: str) -> list:
    """'4 and 6' -> [4, 6]; '2-4' -> [2, 3, 4]."""
    out = []
    for part in re.split(r"\s*(?:,|and|&|or)\s*", spec):
        m = re.fullmatch(r"(\d+)\s*[-–]\s*(\d+)", part)
        out += list(range(int(m[1]), int(m[2]) + 1)) if m else [int(part)]
    return out


def bad_section_refs(text: str, sections: set) -> list:
    """References 'docs/science.md section N' whose N is not a section of the page."""
    bad = []
    for m in _SECTION_REF.finditer(text):
        missing = [n for n in _numbers(m.group(1)) if n not in sections]
        if missing:
            bad.append(f"{' '.join(m.group(0).split())} (no section {missing})")
    return bad


_PATH = re.compile(r"(?:dmat_core|notebooks|docs|bench|tools|results)(?:/[\w.-]+)*/?")
_TYPED = [re.compile(p) for p in (r"dmat_core(/\w+)*(/|\.py)", r"notebooks/(\d\d_\w+\.ipynb)?",
                                  r"docs/([\w.-]+\.md)?", r"bench/([\w.-]+\.(py|md))?",
                                  r"tools/([\w.-]+\.py)?", r"results(/[\w.-]+)*/?")]
_PLACEHOLDER = re.compile(r"(?:^|/)(?:[A-Z]+|X+)(?:\.\w+)?$|[<>*{}]|\.\.\.")


def path_mentions(text: str, markdown: str = "") -> list:
    """(kind, path): repository paths in backticks in `text`, link targets in `markdown`."""
    found = []
    for span in re.findall(r"`([^`\n]+)`", text):
        for token in span.split():
            token = token.strip("()[],;:'\"")
            if _PATH.fullmatch(token) and any(t.fullmatch(token) for t in _TYPED):
                found.append(("backtick", token))
    for target in re.findall(r"\]\(([^)\s]+)\)", markdown):
        if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", target):
            found.append(("link", target.split("#", 1)[0]))
    return found


def missing_paths(text: str, folder: Path, markdown: str = "") -> list:
    """Mentioned paths that do not exist: backticks from the root, links from `folder`."""
    bad = []
    for kind, p in path_mentions(text, markdown):
        base = ROOT if kind == "backtick" else folder
        if not (base / p).exists() and not _PLACEHOLDER.search(p):   # `bench/NAME.py` is a pattern
            bad.append(f"{kind} {p}")
    return bad


_DOTTED = re.compile(r"\bdmat_core(?:\.[A-Za-z_]\w*)+")


def _body_names(body) -> set:
    """Names a module or class body binds at its own level (inside if/try/with too)."""
    names = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for sub in getattr(node, field, []):
                    names |= _body_names(sub.body if isinstance(sub, ast.ExceptHandler) else [sub])
    return names


@functools.lru_cache(maxsize=None)
def _parsed(path: Path):
    return ast.parse(path.read_text(encoding="utf-8"))


def _module_file(parts: list):
    """The file of module `parts` (a .py or a package's __init__.py), or None."""
    base = ROOT.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def unresolved_name(name: str):
    """None if `name` (dmat_core.x.y...) is a module or a name defined in one, else the reason."""
    parts = name.split(".")
    i = len(parts)
    while i > 0 and _module_file(parts[:i]) is None:
        i -= 1
    if i == 0:
        return f"{name}: no module dmat_core"
    if i == len(parts):
        return None
    module, attr = ".".join(parts[:i]), parts[i]
    if attr.startswith("__") and attr.endswith("__"):
        return None                                    # __file__, __version__, ...
    tree = _parsed(_module_file(parts[:i]))
    if attr not in _body_names(tree.body):
        return f"{name}: {module} has no module or top-level name {attr!r}"
    if i + 1 < len(parts):                             # Class.member: look in the class body
        cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == attr), None)
        if cls is not None and parts[i + 1] not in _body_names(cls.body):
            return f"{name}: class {module}.{attr} has no member {parts[i + 1]!r}"
    return None


def unresolved_names(text: str) -> list:
    return [r for r in (unresolved_name(n) for n in sorted(set(_DOTTED.findall(text)))) if r]


_CLAIM = re.compile(r"\bnotebooks?\s+(\d\d(?:\s*(?:-|–|,|and|&|or)\s*\d\d)*)", re.I)


def claimed_notebooks(docstring: str) -> list:
    """Numbers of the notebooks a docstring names: 'Notebooks 02-04 and 08' -> [2, 3, 4, 8]."""
    return sorted({n for m in _CLAIM.finditer(docstring or "") for n in _numbers(m.group(1))})


def imported_modules(code: str) -> set:
    """dmat_core modules a piece of notebook code imports (`from pkg import module` included);
    IPython magics (`%pip`, `!ls`) are skipped."""
    lines = [(line[: len(line) - len(line.lstrip())] + "pass") if line.strip()[:1] in ("%", "!")
             else line for line in code.splitlines()]
    mods = set()
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.Import):
            mods |= {a.name for a in node.names if a.name.startswith("dmat_core")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dmat_core"):
            mods.add(node.module)
            mods |= {f"{node.module}.{a.name}" for a in node.names
                     if _module_file(f"{node.module}.{a.name}".split(".")) is not None}
    return mods


@functools.lru_cache(maxsize=None)
def notebook_imports() -> dict:
    """{number: set of dmat_core modules its code cells import} for every notebook."""
    out = {}
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        code = "\n".join(src for kind, src in cells(nb) if kind == "code")
        out[int(nb.name[:2])] = imported_modules(code)
    return out


def false_notebook_claims(module: str, docstring: str, imports: dict) -> list:
    """Notebooks a module's docstring names that do not import the module."""
    bad = []
    for n in claimed_notebooks(docstring):
        if n not in imports:
            bad.append(f"{module}: notebook {n:02d} does not exist")
        elif module not in imports[n]:
            bad.append(f"{module}: notebook {n:02d} does not import it")
    return bad


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# ----------------------------------------------------------------------------- the repository
def test_docs_page_has_the_sections_the_repository_cites():
    assert {2, 3, 4, 5, 6, 7} <= docs_sections(DOCS.read_text(encoding="utf-8"))


def test_no_file_cites_the_old_reference():
    bad = [f"{rel(p)}: {line}" for p in scanned_files() for line in old_reference_mentions(text_of(p))]
    assert not bad, "cite docs/science.md instead:\n" + "\n".join(bad)


def test_section_references_exist():
    sections = docs_sections(DOCS.read_text(encoding="utf-8"))
    bad = [f"{rel(p)}: {b}" for p in scanned_files() for b in bad_section_refs(text_of(p), sections)]
    assert not bad, "\n".join(bad)


def test_mentioned_paths_exist():
    bad = [f"{rel(p)}: {b}" for p in scanned_files()
           for b in missing_paths(text_of(p), p.parent, markdown_of(p))]
    assert not bad, "\n".join(bad)


def test_dotted_names_resolve():
    bad = [f"{rel(p)}: {b}" for p in scanned_files() for b in unresolved_names(text_of(p))]
    assert not bad, "\n".join(bad)


def test_module_docstrings_name_notebooks_that_import_them():
    bad = []
    for p in sorted((ROOT / "dmat_core").rglob("*.py")):
        doc = ast.get_docstring(_parsed(p.resolve()))
        bad += false_notebook_claims(module_name(p), doc, notebook_imports())
    assert not bad, "\n".join(bad)


# ----------------------------------------------------------------------------- each checker can fail
def test_old_reference_checker_catches_a_mention():
    assert old_reference_mentions(f"defaults as {OLD_REFERENCE} section 3") != []
    assert old_reference_mentions("defaults as docs/science.md section 3") == []


def test_section_checker_catches_a_missing_section():
    sections = {1, 2, 3, 4}
    assert bad_section_refs("see docs/science.md section 4.", sections) == []
    assert bad_section_refs("([docs/science.md section 3](../docs/science.md))", sections) == []
    assert bad_section_refs("see docs/science.md section 42", sections) != []
    assert bad_section_refs("docs/science.md\n    sections 4 and 9", sections) != []
    assert bad_section_refs("`docs/science.md` §7", sections) != []
    assert _numbers("2-4 and 6") == [2, 3, 4, 6]


def test_path_checker_catches_a_missing_path():
    assert missing_paths("`dmat_core/toys/mixtures.py`, `results/demo/table.md`", ROOT) == []
    assert missing_paths("`dmat_core/toys/no_such_module.py`", ROOT) != []
    assert missing_paths("run `bench/missing.py --help`", ROOT) != []
    assert missing_paths("`notebooks/09_missing.ipynb`", ROOT) != []
    assert missing_paths("`results/no_such_study/`", ROOT) != []
    assert missing_paths("`bench/NAME.py` or `results/at_dm/<preset>/table.md`", ROOT) == []  # placeholders
    link_ok, link_bad = "[page](../docs/science.md)", "[page](../docs/missing.md)"
    assert missing_paths(link_ok, ROOT / "notebooks", link_ok) == []
    assert missing_paths(link_bad, ROOT / "notebooks", link_bad) != []
    assert missing_paths("", ROOT, "[badge](https://example.org/x.svg)") == []


def test_dotted_name_checker_catches_a_missing_name():
    assert unresolved_names("dmat_core.toys.mixtures.GaussianMixture and dmat_core.LAYERS") == []
    assert unresolved_names("dmat_core.diffusion.losses.ATConfig.budget, dmat_core.__file__") == []
    assert unresolved_names("dmat_core.toys.mixtures.NoSuchThing") != []
    assert unresolved_names("dmat_core.no_such_layer.module") != []
    assert unresolved_names("dmat_core.diffusion.losses.ATConfig.no_such_member") != []


def test_notebook_claim_checker_catches_a_wrong_number():
    imports = {1: {"dmat_core.toys.mixtures"}, 2: {"dmat_core.toys.train"},
               3: {"dmat_core.toys.train"}, 4: {"dmat_core.toys.train"}}
    assert claimed_notebooks("Notebooks 02-04 and 08 use it; notebook 01 too.") == [1, 2, 3, 4, 8]
    assert false_notebook_claims("dmat_core.toys.train", "Notebooks 02-04 run it.", imports) == []
    assert false_notebook_claims("dmat_core.toys.train", "Notebook 01 runs it.", imports) != []
    assert false_notebook_claims("dmat_core.toys.train", "notebooks 03 and 05", imports) != []
    assert false_notebook_claims("dmat_core.toys.mixtures", "Notebook-style use:", imports) == []
    assert imported_modules("import sys\nif x:\n    %pip install y\n"
                            "from dmat_core.studies import demo as d, LAYERS\n"
                            "import dmat_core.toys.metrics") == \
        {"dmat_core.studies", "dmat_core.studies.demo", "dmat_core.toys.metrics"}
