"""The map in docs/ARCHITECTURE.md, kept true: the import graph of bench/ and models/ (every import, those inside
functions included) has no cycle, no edge the layering forbids, no private name imported from another module, no
argparse outside the CLI, and no import inside a function that defers nothing heavy.

LAYERS is the one place the layering is written down; ARCHITECTURE.md's "Layers" section states the same rule.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "models")

# Layer name -> (module prefixes, the layers it may import besides its own). A module belongs to the layer of its
# longest matching prefix. Shared records may be imported by every stage; a stage never imports a later one.
LAYERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # leaves: records and helpers that import nothing of the suite but each other
    "leaf": (("bench.errors", "bench.text", "bench.files", "bench.bounded_read", "bench.schema", "bench.stats",
              "bench.env", "bench.child_args"), ()),
    # the zoo: imports nothing of bench/
    "zoo": (("models",), ()),
    # what a case is and where its rows live: any stage may import these
    "records": (("bench.cases", "bench.results", "bench.ab.spec", "bench.profiling.opkinds"), ("leaf", "zoo")),
    # how a model runs (a backend prepares it; the child calls it)
    "backends": (("bench.backends",), ("records", "leaf", "zoo")),
    # the measuring child and where its time goes: never imports the launcher or the runner
    "child": (("bench.measure", "bench.profiling", "bench.ab.child"), ("backends", "records", "leaf", "zoo")),
    # the process side: starts children, reads how they ended
    "launch": (("bench.launch",), ("child", "backends", "records", "leaf", "zoo")),
    # what the user asked -> cases, and their scheduling over processes
    "orchestration": (("bench.plan", "bench.precheck", "bench.runner", "bench.health", "bench.quiet",
                       "bench.calibration", "bench.groups", "bench.ab"),
                      ("launch", "child", "backends", "records", "leaf", "zoo")),
    # compare, gates, summary, report: read run folders, never the runner
    "analysis": (("bench.analysis",), ("records", "leaf", "zoo")),
    # one matrix over many machines: drives the runner on each node
    "fleet": (("bench.fleet",), ("orchestration", "analysis", "launch", "child", "backends", "records", "leaf",
                                  "zoo")),
    # the Python API over all of it
    "api": (("bench.api", "bench"), ("fleet", "orchestration", "analysis", "launch", "child", "backends",
                                     "records", "leaf", "zoo")),
    # a history across commits: records runs through the API, confirms by A/B, draws with the report's kit
    "history": (("bench.history",), ("api", "fleet", "orchestration", "analysis", "launch", "child", "backends",
                                     "records", "leaf", "zoo")),
    # the command line: the only place argparse lives
    "cli": (("bench.cli", "bench.commands", "bench.terminal"),
            ("history", "api", "fleet", "orchestration", "analysis", "launch", "child", "backends", "records", "leaf", "zoo")),
}
ARGPARSE_LAYERS = ("cli",)


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module of the importing file
    target: str  # dotted module imported (a project module, or the top-level name of a third-party one)
    names: tuple[str, ...]  # names taken from it (from X import a, b)
    line: int
    in_function: bool  # does not run at import (in a function, or a TYPE_CHECKING-only import)


def module_files() -> dict[str, Path]:
    files = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = p
    return files


def _project_module(name: str, files: dict[str, Path]) -> str | None:
    while name and name not in files:
        name = name.rpartition(".")[0]
    return name or None


def _function_nodes(tree: ast.AST) -> set[int]:
    """Nodes that do not run at import time: inside a function, or under `if TYPE_CHECKING:` (types only)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        deferred = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        type_only = isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        if deferred or type_only:
            inside.update(id(sub) for sub in ast.walk(node) if sub is not node)
    return inside


def _imports_of(module: str, path: Path, files: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    inside = _function_nodes(tree)
    out = []
    for node in ast.walk(tree):
        in_fn = id(node) in inside
        if isinstance(node, ast.Import):
            for a in node.names:
                target = _project_module(a.name, files) or a.name.split(".")[0]
                out.append(Import(module, target, (), node.lineno, in_fn))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            if node.module == "__future__":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in files:  # from bench.launch import isolation: the module itself
                    out.append(Import(module, sub, (), node.lineno, in_fn))
                else:
                    target = _project_module(base, files) or base.split(".")[0]
                    out.append(Import(module, target, (a.name,), node.lineno, in_fn))
    return out


@lru_cache(maxsize=1)
def graph() -> tuple[dict[str, Path], tuple[Import, ...]]:
    files = module_files()
    imports = [imp for m, p in files.items() for imp in _imports_of(m, p, files)]
    return files, tuple(imports)


def layer_of(module: str) -> str:
    best, best_len = None, -1
    for name, (prefixes, _) in LAYERS.items():
        for pre in prefixes:
            if (module == pre or module.startswith(pre + ".")) and len(pre) > best_len:
                best, best_len = name, len(pre)
    assert best is not None, f"{module} is in no layer: add it to LAYERS (tests/test_architecture.py)"
    return best


def _project_edges(imports) -> dict[str, set[str]]:
    files, _ = graph()
    edges: dict[str, set[str]] = {m: set() for m in files}
    for imp in imports:
        if imp.target in files and imp.target != imp.importer:
            edges[imp.importer].add(imp.target)
    return edges


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(sorted(comp))
    return comps


def forbidden_edges(imports) -> list[str]:
    files, _ = graph()
    bad = []
    for imp in imports:
        if imp.target not in files or imp.target == imp.importer:
            continue
        a, b = layer_of(imp.importer), layer_of(imp.target)
        if a != b and b not in LAYERS[a][1]:
            bad.append(f"{imp.importer}:{imp.line} ({a}) imports {imp.target} ({b})")
    return bad


def private_imports(imports) -> list[str]:
    files, _ = graph()
    return [f"{imp.importer}:{imp.line} imports {n} from {imp.target}" for imp in imports
            if imp.target in files and imp.target != imp.importer
            for n in imp.names if n.startswith("_") and not n.startswith("__")]


def _third_party(name: str) -> bool:
    top = name.split(".")[0]  # bench.measure (a namespace package, no __init__) is ours
    return top not in sys.stdlib_module_names and top not in PACKAGES


@lru_cache(maxsize=None)
def top_level_deps(module: str) -> frozenset[str]:
    """Third-party modules that importing `module` loads (its module-level imports, transitively, plus the
    __init__ of every package above it)."""
    files, imports = graph()
    seen, todo, third = {module}, [module], set()
    while todo:
        m = todo.pop()
        parents = [".".join(m.split(".")[:k]) for k in range(1, len(m.split(".")))]
        for dep in [i.target for i in imports if i.importer == m and not i.in_function] + parents:
            if dep in files and dep not in seen:
                seen.add(dep)
                todo.append(dep)
            elif dep not in files and _third_party(dep):
                third.add(dep)
    return frozenset(third)


def needless_deferrals(imports) -> list[str]:
    """An import inside a function must defer something heavy or optional: a third-party module, or a project module
    that loads one, that the importing module does not load already at import time."""
    files, _ = graph()
    bad = []
    for imp in imports:
        if not imp.in_function:
            continue
        if imp.target in files:
            defers = set(top_level_deps(imp.target))
        else:
            defers = {imp.target} if _third_party(imp.target) else set()
        if not defers - top_level_deps(imp.importer):
            bad.append(f"{imp.importer}:{imp.line} imports {imp.target} inside a function (it defers nothing: "
                       "move it to the top)")
    return bad


def argparse_outside_cli(imports) -> list[str]:
    return [f"{i.importer}:{i.line}" for i in imports
            if i.target == "argparse" and layer_of(i.importer) not in ARGPARSE_LAYERS]


# -- the tests ------------------------------------------------------------------------------------------------------

def test_every_module_is_in_a_layer():
    files, _ = graph()
    for m in files:
        layer_of(m)


def test_no_import_cycle():
    _, imports = graph()
    assert find_cycles(_project_edges(imports)) == []


def test_no_import_against_the_layers():
    _, imports = graph()
    assert forbidden_edges(imports) == []


def test_no_private_name_crosses_a_module():
    _, imports = graph()
    assert private_imports(imports) == []


def test_argparse_only_in_the_cli():
    _, imports = graph()
    assert argparse_outside_cli(imports) == []


def test_imports_inside_functions_defer_something_heavy():
    _, imports = graph()
    assert needless_deferrals(imports) == []


@pytest.mark.parametrize("module", ["bench", "bench.cli", "bench.errors"])
def test_the_doors_load_nothing_heavy(module):
    """`import bench` and the CLI's parser (--help, a bad flag's one line) load no torch, pandas, matplotlib or
    Ray: deferred imports are what keep them cheap, and the deferral rule above counts on it."""
    code = (f"import sys, {module}\n"
            "print(','.join(m for m in ('torch', 'pandas', 'matplotlib', 'ray') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "", f"import {module} loads {p.stdout.strip()}"


# -- the checker itself fails on what it forbids ---------------------------------------------------------------------

def _with(extra: list[Import]):
    _, imports = graph()
    return tuple(imports) + tuple(extra)


def test_the_checker_sees_a_cycle_a_layer_break_and_a_private_name():
    back = Import("bench.cases", "bench.runner", ("Runner",), 1, True)  # records importing a stage
    assert any("bench.cases:1 (records) imports bench.runner (orchestration)" in b
               for b in forbidden_edges(_with([back])))
    assert any("bench.cases" in c and "bench.runner" in c for c in find_cycles(_project_edges(_with([back]))))
    private = Import("bench.api", "bench.runner", ("_secret",), 7, False)
    assert "bench.api:7 imports _secret from bench.runner" in private_imports(_with([private]))
    parse = Import("bench.analysis.gates", "argparse", (), 3, False)
    assert "bench.analysis.gates:3" in argparse_outside_cli(_with([parse]))
    light = Import("bench.cli", "json", (), 9, True)
    assert any(b.startswith("bench.cli:9 imports json") for b in needless_deferrals(_with([light])))


@pytest.mark.parametrize("module,layer", [("bench.measure.child", "child"), ("bench.analysis.report.html",
                                                                            "analysis"), ("models.registry", "zoo")])
def test_layer_of_takes_the_longest_prefix(module, layer):
    assert layer_of(module) == layer


if __name__ == "__main__":  # python tests/test_architecture.py: the figures the closing note quotes
    _, _imports = graph()
    _stmts = {(i.importer, i.line): i.in_function for i in _imports}
    print(f"import statements: {len(_stmts)}, inside functions: {sum(_stmts.values())}; cycles: "
          f"{len(find_cycles(_project_edges(_imports)))}, layer breaks: {len(forbidden_edges(_imports))}, private: "
          f"{len(private_imports(_imports))}, needless deferrals: {len(needless_deferrals(_imports))}")
