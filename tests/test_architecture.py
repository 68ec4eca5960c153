"""The package's architecture, checked over its imports (every import statement, those inside
functions included): the core a reader learns from imports nothing from the course's tooling,
and no two modules import each other, directly or around a longer cycle."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "shendu"
TOOLING = {"experiments", "bench", "bench_worker", "widgets", "plot", "receptive", "summarize",
           "cli", "provenance"}
# The core: nn, kernels, optim, models, io, datasets, augment, and every other module but the
# tooling's (the trainer, recipes, checkpoints); the package's __init__ may export tooling.
CORE = {"nn", "kernels", "optim", "models", "io", "datasets", "augment", "train", "recipes",
        "checkpointing", "interrupts", "rollback", "tuning", "rng", "errors", "images",
        "distributed", "export", "quantization", "mixed", "metrics", "detection",
        "applications", "generative", "style", "rl"}


def modules():
    """{dotted name below shendu: path}, a package named by its folder."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name, path, known):
    """The modules of the package that `name` imports; "" is the package itself (shendu), for a
    name imported from its __init__.py (its __version__ excepted: metadata, read lazily)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".") if package else []
            base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for alias in node.names:  # `from . import nn` imports the module nn
                sub = f"{target}.{alias.name}" if target else alias.name
                if sub in known:
                    found.add(sub)
                elif not (target == "" and alias.name == "__version__"):
                    found.add(target)
        elif isinstance(node, ast.ImportFrom) and node.module == "shendu":
            # absolute, as in a module run as a script: `from shendu import nn` imports nn
            found |= {alias.name if alias.name in known else "" for alias in node.names}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for full in names:
                if full == "shendu" or full.startswith("shendu."):
                    found.add(full.removeprefix("shendu").lstrip("."))
    return {m for m in found if m != name}


def graph():
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def top(name):
    return name.split(".")[0]


def test_the_lists_name_every_module():
    tops = {top(name) for name in graph() if name}
    assert CORE | TOOLING == tops - {"__main__", "results"}, tops ^ (CORE | TOOLING)


def test_the_core_imports_no_tooling():
    g = graph()
    for name, targets in g.items():
        if top(name) in CORE:
            assert not {top(t) for t in targets} & TOOLING, f"{name} imports {sorted(targets)}"


def test_no_module_imports_from_the_facade():
    """shendu/__init__.py imports the modules it exports; a module that imported names back
    from it would close a cycle through it."""
    for name, targets in graph().items():
        assert not name or "" not in targets, f"{name} imports from shendu/__init__.py"


def test_no_import_cycles():
    g = {name: targets - {""} for name, targets in graph().items() if name}

    def visit(name, path):
        if name in path:
            cycle = path[path.index(name):] + [name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        for target in sorted(g.get(name, ())):
            if target not in done:
                visit(target, path + [name])
        done.add(name)

    done = set()
    for name in sorted(g):
        visit(name, [])


def test_the_checks_catch_a_cycle_and_a_forbidden_import(tmp_path, monkeypatch):
    (tmp_path / "nn").mkdir()
    (tmp_path / "__init__.py").write_text("from . import nn\n")
    (tmp_path / "nn" / "__init__.py").write_text("from ..bench import x\n")
    (tmp_path / "bench.py").write_text("from .nn import y\n")
    for name in CORE | TOOLING - {"nn", "bench"}:
        (tmp_path / f"{name}.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path)
    assert graph()["nn"] == {"bench"} and graph()["bench"] == {"nn"}
    with pytest.raises(AssertionError, match="nn imports"):
        test_the_core_imports_no_tooling()
    with pytest.raises(pytest.fail.Exception, match="import cycle: bench -> nn -> bench"):
        test_no_import_cycles()
