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
