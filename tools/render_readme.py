"""Copy results files into README.md (and the notes beside the results) between
`<!-- include: PATH -->` and `<!-- end -->` markers, so every table in them comes from a file an
experiment wrote (`make readme`). `--check` exits 1 when one is out of date (the tests call it)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "results/at_dm/NOTES.md")
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
    stale = []
    for name in DOCS:
        doc = ROOT / name
        old = doc.read_text()
        new = render(old)
        if new != old:
            stale.append(name)
            if "--check" not in argv:
                doc.write_text(new)
    if "--check" in argv and stale:
        print(f"{', '.join(stale)} out of date with the results files: run `make readme`")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
