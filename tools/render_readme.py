"""Copy results files into README.md between `<!-- include: PATH -->` and `<!-- end -->` markers,
so every number in the README comes from a file an experiment wrote (`make readme`).
`--check` exits 1 when README is out of date (the test suite calls it)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATTERN = re.compile(r"(<!-- include: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- end -->)", re.S)


def render(text: str) -> str:
    def repl(m):
        body = (ROOT / m["path"]).read_text()
        if m["path"].endswith(".txt"):
            body = "```\n" + body.rstrip("\n") + "\n```\n"
        return m.group(1) + body + m.group(4)
    return PATTERN.sub(repl, text)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    readme = ROOT / "README.md"
    old = readme.read_text()
    new = render(old)
    if "--check" in argv:
        if new != old:
            print("README.md is out of date with its results files: run `make readme`")
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
