"""The package's import graph: no cycles between modules, and the data layer knows no method."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "src" / "metarepro"


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The metarepro modules that `path` imports anywhere in its body (module level or inside functions)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("metarepro"):
                continue
            for alias in node.names:   # `from . import data` imports the module metarepro.data
                sub = f"{target}.{alias.name}"
                found.add(sub if (PKG.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                          or (PKG.parent / sub.replace(".", "/") / "__init__.py").exists() else target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("metarepro")}
    return found - {me}


GRAPH = {module_name(p): imports(p) for p in PKG.rglob("*.py")}


def test_no_import_cycles():
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for n in sorted(GRAPH.get(m, ())):
            # a package's __init__ importing its own submodules is how packages work; the cycle check is about
            # a submodule importing a module that (indirectly) imports it back
            visit(n)
        stack.pop()
    for m in sorted(GRAPH):
        visit(m)
    real = [c for c in cycles if not all(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert not real, "import cycles: " + "; ".join(" -> ".join(c) for c in real)


def test_data_layer_imports_no_method():
    bad = {m: sorted(i for i in deps if i.startswith("metarepro.methods") or i.startswith("metarepro.addons"))
           for m, deps in GRAPH.items() if m.startswith("metarepro.data")}
    assert not any(bad.values()), bad


def test_no_module_calls_another_packages_private_functions():
    offenders = []
    for p in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                    and isinstance(node.value, ast.Name) and node.value.id in ("datasets", "data", "methods", "models",
                                                                               "addons", "tables", "train", "pretrain"):
                offenders.append(f"{p.relative_to(PKG)}: {node.value.id}.{node.attr}")
    assert not offenders, offenders


def test_each_entry_point_reads_as_its_own_steps():
    """pretrain, metatrain and evaluate share metarepro.loop (resume, validation, checkpoints, progress) and the
    outer step lives in metarepro.addons.outer: each entry point stays short, and methods keep no outer step."""
    for rel, name in (("train.py", "metatrain"), ("pretrain.py", "pretrain"), ("evaluate.py", "evaluate")):
        fn = next(n for n in ast.walk(ast.parse((PKG / rel).read_text()))
                  if isinstance(n, ast.FunctionDef) and n.name == name)
        assert fn.end_lineno - fn.lineno + 1 <= 60, f"{rel}:{name} is {fn.end_lineno - fn.lineno + 1} lines"
    base = ast.parse((PKG / "methods" / "base.py").read_text())
    learner = next(n for n in base.body if isinstance(n, ast.ClassDef) and n.name == "MetaLearner")
    assert not {n.name for n in learner.body if isinstance(n, ast.FunctionDef)} & {"meta_step", "meta_gradient"}


def test_report_rules_are_one_family_per_output_kind():
    """report.smk: one rule for tables, one for side tables, one for figures, one for the index."""
    text = (PKG.parents[1] / "workflow" / "rules" / "report.smk").read_text()
    assert sum(line.startswith("rule ") for line in text.splitlines()) <= 4
