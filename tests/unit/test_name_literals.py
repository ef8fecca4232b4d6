"""A method, add-on or dataset name is written in its own module, its card, its registry line and the tests, and
nowhere else: behaviour that depends on which method, add-on or dataset a run uses reads a card property or a
flag, so that adding one is its module, its registry line and its card (and nothing silently keys on an old name).

What counts: every string constant of every .py file under src/metarepro that equals a registered name exactly
(docstrings excluded; the literal parts of f-strings count as any constant does, since `f"{x}"` around a name is still
the name), and every quoted string of the Snakefile and workflow/rules/*.smk.

The names: the method cards' (= methods.METHODS), the add-on cards' (= the add-on registries) with the test-time
names their hooks add (`cml_dagger`), the dataset cards' (= data.DATASETS).

Allowed places for a name:
- its own module: the file that defines its registered class (methods.METHODS[name], the add-on registries), for a
  dataset its DatasetSpec's `module` (the one with prepare) and data/<name>.py;
- its card file: method_cards.yaml (not Python), addon_cards.py, dataset_cards.py;
- its registry: the registry assignment itself (METHODS in methods/__init__.py; SAMPLERS, AGGREGATORS, TERMS in
  addons/__init__.py; DATASETS in data/__init__.py; SOURCES in data/download.py), not the rest of those files;
- the tests (not scanned).
The default add-ons (`uniform`, `mean`: the add-on cards' `default: true`) are exempt: they are never written in a
method name, and their names are ordinary words and file-format keys (eval.json's `mean` score).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

from metarepro import addons, data, methods
from metarepro.addon_cards import ADDON_CARDS
from metarepro.cards import cards
from metarepro.data import download
from metarepro.dataset_cards import DATASET_CARDS

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "metarepro"
REGISTRIES = {"methods/__init__.py": {"METHODS"}, "addons/__init__.py": {"SAMPLERS", "AGGREGATORS", "TERMS"},
              "data/__init__.py": {"DATASETS"}, "data/download.py": {"SOURCES"}}
CARD_FILES = {"method": "method_cards.yaml", "addon": "addon_cards.py", "dataset": "dataset_cards.py"}


def _rel(path: str | Path) -> str:
    return Path(path).resolve().relative_to(SRC).as_posix()


def _module_file(cls: type) -> str:
    return cls.__module__.removeprefix("metarepro.").replace(".", "/") + ".py"


def _names() -> dict[str, tuple[str, set[str]]]:
    """name -> (axis, the files where it may be written besides its registry)."""
    out: dict[str, tuple[str, set[str]]] = {}
    for name in cards():
        out[name] = ("method", {_module_file(methods.METHODS[name]), CARD_FILES["method"]})
    registered = {**addons.SAMPLERS, **addons.AGGREGATORS, **addons.TERMS}
    for name, c in ADDON_CARDS.items():
        if c.default:
            continue
        for n in (name, *([c.test_name] if c.test_name else [])):
            out[n] = ("addon", {_module_file(registered[name]), CARD_FILES["addon"]})
    for name, spec in data.DATASETS.items():
        own = {f"data/{name}.py", CARD_FILES["dataset"]} | ({f"data/{spec.module}.py"} if spec.module else set())
        out[name] = ("dataset", own)
    return out


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def _registry_lines(tree: ast.Module, registries: set[str]) -> set[int]:
    lines: set[int] = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id in registries for t in targets):
            lines |= set(range(node.lineno, node.end_lineno + 1))
    return lines


def offenders() -> list[str]:
    names = _names()
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = _rel(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        skip, registry = _docstrings(tree), _registry_lines(tree, REGISTRIES.get(rel, set()))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
                continue
            if node.value in names and rel not in names[node.value][1] and node.lineno not in registry:
                out.append(f"src/metarepro/{rel}:{node.lineno}: {names[node.value][0]} name {node.value!r}")
    quoted = re.compile(r"""(["'])([a-z0-9_]+)\1""")
    for path in [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            for m in quoted.finditer(line.split("#", 1)[0] if line.lstrip().startswith("#") else line):
                if m[2] in names:
                    out.append(f"{path.relative_to(ROOT)}:{i}: {names[m[2]][0]} name {m[2]!r}")
    return out


def test_the_names_are_the_registries():
    assert set(cards()) == set(methods.METHODS)
    assert set(DATASET_CARDS) == set(data.DATASETS)
    assert set(download.SOURCES) <= set(DATASET_CARDS)


def test_no_name_literal_outside_its_module_card_and_registry():
    found = offenders()
    assert not found, ("name literals outside their module, card and registry (read a card property or flag "
                       "instead):\n" + "\n".join(found))
