"""The documentation pages against the code they describe: the README's file tree lists exactly the modules of
`src/vrp`, and docs/evaluation.md holds the Definitions that report.md is written with (`vrp.evaluate.report`)."""
from __future__ import annotations

import re
from pathlib import Path

from vrp.evaluate.report import DEFINITIONS

ROOT = Path(__file__).resolve().parents[1]


def readme_tree_modules(text: str) -> set[str]:
    """The paths under `src/vrp/` that the README's file tree lists (`files.py`, `train/setup.py`, `serve/static/`)."""
    block = text.split("\nsrc/vrp/\n", 1)[1].split("```", 1)[0]
    return {m[1] for m in re.finditer(r"^  (\S+)", block, re.M)}


def test_readme_tree_lists_every_module_and_nothing_else() -> None:
    src = ROOT / "src" / "vrp"
    listed = readme_tree_modules((ROOT / "README.md").read_text(encoding="utf-8"))
    files = {p.relative_to(src).as_posix() for p in src.rglob("*.py")
             if p.name != "__init__.py" or p.parent == src / "cli"} - {"__init__.py"}
    listed_files = {x for x in listed if x.endswith(".py") and "<" not in x}
    generic = {x for x in listed if "<" in x}  # `cli/<command>.py`: one line for the subcommand modules
    covered = {f for f in files if f.startswith("cli/") and generic}
    assert sorted(files - listed_files - covered) == []          # a module missing from the tree
    assert sorted(x for x in listed_files if not (src / x).is_file()) == []  # a line naming no file


def test_docs_evaluation_holds_the_report_definitions() -> None:
    page = (ROOT / "docs" / "evaluation.md").read_text(encoding="utf-8")
    head, body = DEFINITIONS.split("\n", 1)
    assert head in page
    assert body.strip() in page
