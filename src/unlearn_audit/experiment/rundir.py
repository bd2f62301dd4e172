"""Writing a run directory: results.json (atomic), curves as JSONL and CSV, figures."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from ..files import atomic_path, write_text_atomic
from ..results.store import target_dirs


def _clean(x):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def write_json_atomic(path: Path, doc) -> Path:
    """Write JSON to a temporary file beside ``path``, then rename it into place (a reader never
    sees half a file). The file gets the usual permissions (mkstemp's are owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(_clean(doc), indent=2) + "\n")


def curve_rows(results: dict) -> list[dict]:
    """One row per (attack, model, step): the relearning curves in a tidy table."""
    rows = []
    for attack, base in results.get("baselines", {}).items():
        for model, c in base.items():
            if not isinstance(c, dict) or "steps" not in c:  # not a relearning curve (e.g. logit lens by layer)
                continue
            for i, step in enumerate(c["steps"]):
                rows.append({"attack": attack, "model": model, "step": step, "acc": c["acc"][i],
                             "unrelated_acc": c.get("unrelated_acc", [None] * len(c["steps"]))[i],
                             "recovery": None, "residual": None})
    for name, m in results.get("methods", {}).items():
        for attack, r in m.get("attacks", {}).items():
            c = r.get("curve")
            if not c or "steps" not in c:
                continue
            for i, step in enumerate(c["steps"]):
                rows.append({"attack": attack, "model": name, "step": step, "acc": c["acc"][i],
                             "unrelated_acc": c.get("unrelated_acc", [None] * len(c["steps"]))[i],
                             "recovery": c["recovery"][i], "residual": c["residual"][i]})
    return rows


def write_results(out: Path, results: dict) -> dict[str, Path]:
    """``results.json`` (the run document) and each target's curves.jsonl and curves.csv (with
    several targets, under ``targets/<i>-<concept>/`` beside that target's own results.json);
    the paths of the top-level files. The figures and the report are
    :func:`unlearn_audit.report.outputs.write_outputs`'s."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": write_json_atomic(out / "results.json", results)}
    for path, doc in target_dirs(out, results):
        if path != out:
            path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path / "results.json", doc)
        curves = write_curves(path, doc)
        if path == out:
            paths.update(curves)
    return paths


def write_curves(out: Path, results: dict) -> dict[str, Path]:
    """One target's relearning curves as curves.jsonl and curves.csv in ``out`` (nothing when it
    has none)."""
    out = Path(out)
    paths = {}
    rows = [_clean(r) for r in curve_rows(results)]
    if rows:
        write_text_atomic(out / "curves.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        with atomic_path(out / "curves.csv") as tmp, tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        paths["curves"] = out / "curves.csv"
    return paths
