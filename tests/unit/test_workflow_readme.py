"""workflow/README.md stays true: every rule of the workflow is in its stage table, every file it names exists, and
every registry a recipe names is defined (at module level) in one of the files the same recipe names."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "workflow" / "README.md"


def _paths(text: str) -> list[str]:
    return [p for p in re.findall(r"`([^`\s]+)`", text) if p.startswith(("src/", "rules/", "workflow/", "tests/"))
            or p == "Snakefile"]


def _resolve(p: str) -> Path:
    return REPO / "workflow" / p if p.startswith("rules/") else REPO / p


def test_every_rule_is_in_the_stage_table():
    rules = {m for f in (REPO / "workflow" / "rules").glob("*.smk") for m in
             re.findall(r"^rule (\w+):", f.read_text(), flags=re.M)}
    rules |= set(re.findall(r"^rule (\w+):", (REPO / "Snakefile").read_text(), flags=re.M))
    table = README.read_text().split("## Stages", 1)[1].split("##", 1)[0]
    named = {r for row in re.findall(r"^\|([^|]+)\|", table, flags=re.M) for r in re.findall(r"`(\w+)`", row)}
    assert rules and rules == named


def test_every_named_file_exists():
    missing = [p for p in _paths(README.read_text())
               if not (list(REPO.glob(str(_resolve(p).relative_to(REPO)))) if "*" in p else _resolve(p).exists())]
    assert not missing


def test_every_recipe_registry_is_defined_where_the_recipe_says():
    recipes = README.read_text().split("## Recipes", 1)[1]
    for bullet in re.split(r"\n- ", recipes)[1:]:
        files = [_resolve(p) for p in _paths(bullet) if p.endswith(".py")]
        sources = "\n".join(f.read_text() for f in files)
        for name in re.findall(r"`([A-Z][A-Z_]{2,})`", bullet):
            assert re.search(rf"^{name}\b.*=", sources, flags=re.M), f"{name} is not defined in {files}"
