"""The package layout: imports point one way (nn -> models -> io -> families -> tasks -> train / evaluate / predict ->
cli, tools beside the tasks), no module imports another's private names, and no import cycle anywhere in src/, the
imports inside functions included. Read from the source (every module of every folder), so nothing is skipped
because nothing imported it."""
import ast
import importlib.util
from pathlib import Path

import pytest

SRC = Path(importlib.util.find_spec("swinkit").submodule_search_locations[0])
# a module under the first prefix imports nothing under the others
LOWER = {
    "swinkit.utils": ("swinkit.nn", "swinkit.models", "swinkit.io", "swinkit.families", "swinkit.tasks",
                      "swinkit.train", "swinkit.data", "swinkit.inference", "swinkit.tools"),
    "swinkit.nn": ("swinkit.models", "swinkit.io", "swinkit.families", "swinkit.tasks", "swinkit.train",
                   "swinkit.data", "swinkit.factory", "swinkit.tools", "swinkit.evaluate", "swinkit.predict",
                   "swinkit.inference", "swinkit.metrics"),
    "swinkit.nn.mixers": ("swinkit.models", "swinkit.io", "swinkit.families", "swinkit.tasks", "swinkit.train",
                          "swinkit.data", "swinkit.factory", "swinkit.tools", "swinkit.evaluate", "swinkit.predict",
                          "swinkit.inference", "swinkit.metrics"),
    "swinkit.models": ("swinkit.io", "swinkit.families", "swinkit.tasks", "swinkit.train", "swinkit.data",
                       "swinkit.factory", "swinkit.tools", "swinkit.evaluate", "swinkit.predict", "swinkit.inference",
                       "swinkit.metrics"),
    "swinkit.io": ("swinkit.tasks", "swinkit.train", "swinkit.data", "swinkit.factory", "swinkit.tools",
                   "swinkit.evaluate", "swinkit.predict", "swinkit.inference", "swinkit.metrics"),
    "swinkit.interop": ("swinkit.io", "swinkit.families", "swinkit.tasks", "swinkit.train", "swinkit.data",
                        "swinkit.factory", "swinkit.tools", "swinkit.evaluate", "swinkit.predict", "swinkit.inference",
                        "swinkit.metrics"),  # transformers' AutoBackbone: config and models only
    "swinkit.io.files": ("swinkit.models", "swinkit.nn", "swinkit.io.formats", "swinkit.families"),
    "swinkit.io.images": ("swinkit.models", "swinkit.nn", "torch"),
    "swinkit.io.formats": ("swinkit.families", "swinkit.io.load"),
    "swinkit.families": ("swinkit.io.load", "swinkit.tasks", "swinkit.tools", "swinkit.factory"),
    "swinkit.data": ("swinkit.models", "swinkit.families", "swinkit.tasks", "swinkit.train", "swinkit.tools"),
    "swinkit.metrics": ("swinkit.tasks", "swinkit.train", "swinkit.tools"),  # shared by tasks: below them
    "swinkit.inference.dense": ("swinkit.tasks", "swinkit.train", "swinkit.tools"),
    "swinkit.inference": ("swinkit.train", "swinkit.evaluate", "swinkit.predict", "swinkit.tools"),
    "swinkit.tasks": ("swinkit.tools", "swinkit.evaluate", "swinkit.predict", "swinkit.train.loop"),
    "swinkit.train": ("swinkit.tools.bench", "swinkit.tools.viz", "swinkit.evaluate", "swinkit.predict"),
    "swinkit.train.loop": ("swinkit.models", "swinkit.nn", "swinkit.tools"),  # the loop knows no model: it asks
    "swinkit.tools": ("swinkit.train.loop", "swinkit.evaluate", "swinkit.predict"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, list[tuple[str, list[str], bool]]]:
    """module -> [(imported module, names, at module level)] for every import in src/swinkit, relative ones
    resolved; `from pkg import sub` counts as importing pkg.sub when sub is a module."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    out = {}
    for name, path in modules.items():
        tree, found = ast.parse(path.read_text()), []
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(a.name, [], id(node) in top) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")
                    parent = parent[:len(parent) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                names = [a.name for a in node.names]
                subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
                found += [(base, [n for n in names if f"{base}.{n}" not in modules], id(node) in top)]
                found += [(s, [], id(node) in top) for s in subs]
        out[name] = found
    return out


IMPORTS = imports()


@pytest.mark.parametrize("lower", list(LOWER))
def test_lower_layers_import_nothing_above_them(lower):
    assert any(m == lower or m.startswith(lower + ".") for m in IMPORTS), f"no module {lower}: update LOWER"
    bad = sorted({f"{m} imports {target}" for m, found in IMPORTS.items() if m == lower or m.startswith(lower + ".")
                  for target, _, _ in found if any(target == f or target.startswith(f + ".") for f in LOWER[lower])})
    assert bad == []


def test_the_onnx_path_imports_torch_only_where_it_reads_weights():
    """`predict --onnx` runs without torch: what it imports (export.py's top half, io.files, io.images) imports torch
    only inside the functions that need it."""
    for m in ("swinkit.io.files", "swinkit.io.images", "swinkit.utils.cpu"):
        assert [t for t, _, top in IMPORTS[m] if top and t.split(".")[0] == "torch"] == [], m


def test_every_folder_is_covered():
    folders = {module_name(p.parent) for p in SRC.rglob("*.py") if p.parent != SRC}
    assert folders <= set(LOWER), f"folders without a layer rule: {sorted(folders - set(LOWER))}"


def test_a_task_imports_no_other_task():
    tasks = {m for m in IMPORTS if m.startswith("swinkit.tasks.") and m != "swinkit.tasks.base"}
    own = {"swinkit.tasks.detect": {"swinkit.tasks.detect_data"}}  # a task's own data module
    bad = sorted(f"{m} imports {t}" for m in tasks for t, _, _ in IMPORTS[m] if t in tasks and t != m
                 and t not in own.get(m, ()))
    assert bad == []


def test_no_private_name_is_imported_from_another_file():
    bad = sorted(f"{m}: from {target} import {n}" for m, found in IMPORTS.items() for target, names, _ in found
                 if target.startswith("swinkit") for n in names if n.startswith("_") and not n.startswith("__"))
    assert bad == []


def test_no_import_cycle_anywhere():
    graph = {m: {t for t, _, _ in found if t in IMPORTS and t != m} for m, found in IMPORTS.items()}
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}  # a package's own __init__
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []
