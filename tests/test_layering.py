"""The package's import arrows point one way (read from the source with ``ast``, lazy imports
inside functions included).

Layers, bottom to top; a module imports its own package and lower layers only, so two packages
on one layer never import each other (methods and attacks, metrics and training, experiment
and report); the foundation's small modules may import one another:

    foundation  errors, params, files, faults, progress, registry, results (schema, store)
    world       the synthetic world: pure data, no torch
    data        targets, encoding, benchmarks
    metrics, training
    subject     a model, its prompt, sites and interventions
    organisms   the built-in organism and the one resolver of organism:/oracle: specs
    methods, attacks
    api
    experiment, report   (report reads results only: foundation and nothing else)
    cli_output < cli_experiments < cli
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "unlearn_audit"

FOUNDATION = ("errors", "params", "files", "faults", "progress", "registry", "results", "distributed", "__version__")
LAYERS = [FOUNDATION, ("world",), ("data",), ("metrics", "training"), ("subject",), ("organisms",), ("sisa",),
          ("methods", "attacks"), ("api",), ("experiment", "report"), ("cli_output",), ("cli_experiments", "cli_world"),
          ("cli",), ("__main__",)]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
ONLY = {"report": set(FOUNDATION)}                    # may import nothing else
NO_TORCH = ("world", "results")                       # pure data: importable without torch


def module_imports(path: Path) -> Iterable[tuple[str, str]]:
    """``(imported module, kind)`` for every import in ``path``: kind ``own`` for this package
    (dotted from ``unlearn_audit``), ``other`` for third-party modules."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = rel if path.name == "__init__.py" else rel[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ((node.module,) if node.module else ()))
            else:
                base = node.module or ""
            if base.startswith("unlearn_audit"):
                if node.module is None or base == "unlearn_audit":   # from . import progress
                    yield from ((f"{base}.{a.name}", "own") for a in node.names)
                else:
                    yield base, "own"
            else:
                yield base, "other"
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, "own" if a.name.startswith("unlearn_audit") else "other"


def top(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(edges: Iterable[tuple[str, str]]) -> list[str]:
    """The edges ``(from top-level name, to top-level name)`` that break the layering."""
    bad = []
    for a, b in edges:
        if a == b or not a or not b:
            continue
        if a not in RANK or b not in RANK:
            bad.append(f"{a} -> {b}: {a if a not in RANK else b} is in no layer (add it to LAYERS)")
        elif a in ONLY and b not in ONLY[a]:
            bad.append(f"{a} -> {b}: {a} may import only {', '.join(sorted(ONLY[a]))}")
        elif RANK[b] > RANK[a] or (RANK[b] == RANK[a] and a not in FOUNDATION):
            bad.append(f"{a} -> {b}: {'a peer' if RANK[b] == RANK[a] else 'an upper layer'}")
    return bad


def package_edges() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    own, third_party = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":  # the lazy public names: strings, not imports
            continue
        name = top(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        for module, kind in module_imports(path):
            (own if kind == "own" else third_party).append((name, top(module) if kind == "own" else module))
    return own, third_party


def test_the_package_imports_only_downwards():
    own, _ = package_edges()
    assert own, "no imports found: the reader is broken"
    assert violations(own) == []


def test_world_and_results_import_no_torch():
    _, third_party = package_edges()
    assert [(a, m) for a, m in third_party if a in NO_TORCH and m.split(".")[0] in ("torch", "transformers")] == []


def test_the_checker_catches_upward_peer_and_report_arrows():
    assert violations([("subject", "organisms")]) == ["subject -> organisms: an upper layer"]
    assert violations([("methods", "attacks"), ("experiment", "report")]) == [
        "methods -> attacks: a peer", "experiment -> report: a peer"]
    assert violations([("report", "metrics")]) == [
        f"report -> metrics: report may import only {', '.join(sorted(FOUNDATION))}"]
    assert violations([("newpkg", "errors")]) == ["newpkg -> errors: newpkg is in no layer (add it to LAYERS)"]
    assert violations([("attacks", "metrics"), ("cli", "api"), ("report", "results")]) == []
