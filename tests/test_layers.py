"""The package's layering, read from its source (ast): shared layers never import upward or name a method.

Layers, lowest first (a module may import its own layer and lower ones):

    base        errors, atomic, integrity, progress, plugins, pools, cli, __init__
    parallel    process groups, tensor-parallel layers
    attention   mask registry and backends
    data        shards, tokenizers, datasets, preprocessing
    models      ModelConfig, the GPT, the architecture registry, import/export
    generation  sampling, KV-cached and uncached generation, the generator registry
    training    DeepSpeed engine, checkpoints, configs
    entry       train, generate, command, __main__
    launch      torchrun / deepspeed / SLURM launchers
    methods     one package per method (gpthf, gist, equal_info, and any plugin)
    shims       old entry points kept working (``python -m megacompress.gist``, ``megacompress.compression.*``)

Methods are found at run time by `megacompress.plugins` (importlib, by name), the one
place a lower layer reaches a method; no static import does, and no line of a shared layer
(code, string, docstring or comment) names one. Run this file directly
(``python tests/test_layers.py``) to print the graph.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "megacompress"
LAYERS = ["base", "parallel", "attention", "data", "models", "generation", "training", "entry", "launch", "methods",
          "shims"]
BASE = {"errors", "atomic", "integrity", "progress", "plugins", "pools", "cli", "__init__", "assets"}
ENTRY = {"train", "generate", "command", "__main__"}
# Old command lines kept working (the contract); each only imports a method's main.
SHIMS = {"gist", "compression"}
METHOD_NAME = re.compile(r"(?<![a-z])(gpthf|gist|equal[_-]?info)", re.I)


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top in BASE:
        return "base"
    if top in SHIMS:
        return "shims"
    if top in ENTRY:
        return "entry"
    return top


def imports(path: Path) -> set[str]:
    """Every megacompress module a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("megacompress")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("megacompress"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    known = modules()
    return {m for m in found if m in known}


def graph() -> dict[str, set[str]]:
    return {name: imports(path) for name, path in modules().items()}


def upward_imports() -> list[str]:
    bad = []
    for module, targets in graph().items():
        for target in targets:
            if LAYERS.index(layer(target)) > LAYERS.index(layer(module)):
                bad.append(f"{module} ({layer(module)}) imports {target} ({layer(target)})")
    return sorted(bad)


def layer_cycles() -> list[list[str]]:
    """Cycles of the graph of layers (and of method packages among themselves)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for module, targets in graph().items():
        for target in targets:
            a, b = _unit(module), _unit(target)
            if a != b:
                edges[a].add(b)
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


def _unit(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[1:3]) if layer(module) == "methods" else layer(module)


def method_names_in_shared_layers() -> list[str]:
    """Lines of shared layers and entry modules that name a method: code, strings, docstrings
    and comments alike (a shared layer describes the registries, not the methods behind them)."""
    bad = []
    for module, path in modules().items():
        if layer(module) in ("methods", "launch", "shims"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if METHOD_NAME.search(line):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    return bad


def test_no_shared_layer_imports_a_higher_layer():
    assert upward_imports() == []


def test_layer_graph_has_no_cycle():
    assert layer_cycles() == []


def test_shared_layers_name_no_method():
    assert method_names_in_shared_layers() == []


def test_every_module_has_a_layer():
    assert {layer(m) for m in modules()} <= set(LAYERS)


if __name__ == "__main__":
    edges = defaultdict(set)
    for module, targets in graph().items():
        for target in targets:
            if _unit(module) != _unit(target):
                edges[_unit(module)].add(_unit(target))
    for unit in sorted(edges, key=lambda u: (LAYERS.index(u.split(".")[0]), u)):
        print(f"{unit:22} -> {', '.join(sorted(edges[unit]))}")
    print("upward imports:", *(upward_imports() or ["none"]), sep="\n  ")
    print("cycles:", *([" -> ".join(c) for c in layer_cycles()] or ["none"]), sep="\n  ")
    print("method names in shared layers:", *(method_names_in_shared_layers() or ["none"]), sep="\n  ")
    sys.exit(0)
