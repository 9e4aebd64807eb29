"""Every document the code and docs cite is in the repository (a clone has what it points to)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITED = re.compile(r"\bdocs/[\w-]+\.md\b")


def test_cited_docs_exist():
    sources = [p for p in ROOT.rglob("*") if p.suffix in (".py", ".md", ".yaml")
               and not any(part.startswith(".") or part in ("outputs", "data", "runs") for part in
                           p.relative_to(ROOT).parts[:-1])]
    cited = {(m, p.relative_to(ROOT)) for p in sources for m in CITED.findall(p.read_text(errors="replace"))}
    assert len({m for m, _ in cited}) >= 3  # the architecture, formats and ShapeWorld pages are cited
    missing = sorted(f"{where} cites {doc}" for doc, where in cited if not (ROOT / doc).is_file())
    assert not missing, "\n".join(missing)
