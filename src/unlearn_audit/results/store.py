"""The results store: one tidy table, one row per cell x metric x series point, in SQLite.

Why SQLite and not Parquet: it is in Python's standard library (no new dependency; pyarrow
alone is ~40 MB), one file that ``sqlite3``, pandas (``read_sql``), R, DuckDB and any SQL
browser open without our code, and it is written here in a second. The table is small (a
few thousand rows per cell), so a columnar format buys nothing. ``results.json`` stays the
nested document scripts already read; this table is the same numbers, flattened.

Table ``results``:

    target   concept name
    model    original | oracle | unlearned
    setting  readable setting name (npo_gd[beta=3]); original/oracle for the references
    method   registered method name (NULL for original/oracle)
    params   the method's parameters as JSON
    seed     the cell's seed (NULL where nothing depends on it)
    attack   attack name; NULL for the behavioural evaluation before any attack
    metric   dotted path in results.json (forget_acc, sets.forget.nll, curve.acc, krs.attention)
    step     relearning step, for curves
    layer    layer (window centre), for per-layer results (logit lens, patching KRS, probes)
    k        in-context shots
    alpha    interpolation point between original (0) and unlearned (1) weights
    bits     quantization width
    value    the number

Which lists are series along which axis is each attack's declaration (``axes``, ``indexed`` of
:class:`~unlearn_audit.results.schema.AttackDeclaration`, written into ``results.json``), never a
guess from a key's name or a list's length alone. A list of lists declared ``indexed`` (the
re-emergence saliency per step and layer) gives rows with two axes set.

Table ``meta`` (key, value): config hash, experiment config and versions, as JSON strings.
"""

from __future__ import annotations

import errno
import json
import math
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from .schema import AXES, AttackDeclaration
from .schema import declaration as declared

COLUMNS = ("target", "model", "setting", "method", "params", "seed", "attack", "metric", *AXES, "value")
STORE = "results.sqlite"


def target_docs(results: dict) -> list[dict]:
    """The per-target documents of ``results.json`` (files of older versions too: a mapping of
    targets, or one target's document by itself)."""
    targets = results.get("targets")
    if isinstance(targets, list):
        return targets
    return list(targets.values()) if isinstance(targets, dict) else [results]


def target_dirs(out: Path, results: dict) -> list[tuple[Path, dict]]:
    """Where each target's curves and figures go: the run directory itself for one target, else
    ``targets/<i>-<concept>`` per target."""
    docs = target_docs(results)
    if len(docs) == 1:
        return [(Path(out), docs[0])]
    dirs = []
    for i, doc in enumerate(docs):
        slug = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in doc["concept"])[:40]
        dirs.append((Path(out) / "targets" / f"{i}-{slug}", doc))
    return dirs


def _number(v) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and math.isfinite(v):
        return float(v)
    return None


def _numbers(value) -> bool:
    return isinstance(value, list) and bool(value) and all(v is None or _number(v) is not None for v in value)


def flatten(doc: dict, declaration: AttackDeclaration | None = None, prefix: str = "",
            context: dict[str, list] | None = None, inherited: str | None = None,
            ) -> Iterator[tuple[str, dict[str, float], float]]:
    """``(metric, {axis: value}, value)`` for every number in ``doc``, read with the attack's
    ``declaration`` (:class:`~unlearn_audit.results.schema.AttackDeclaration`; the default one
    for evaluations): a key of ``axes`` holds an axis's values, and a list of numbers beside or
    below it, as long as it, becomes one row per value (the innermost such axis wins); a key of
    ``indexed`` is a list whose index is its axis, or a mapping of such lists (in a list of lists,
    the inner index, the outer one read as above); ``[lo, hi]`` intervals (``*_ci``) become ``<name>.lo``/``.hi``; any other
    list gives ``<name>.<i>`` rows; nulls and strings are skipped."""
    declaration = declaration or AttackDeclaration()
    context = dict(context or {})
    for key, axis in declaration.axes.items():
        if _numbers(doc.get(key)):
            context.pop(axis, None)
            context[axis] = doc[key]                      # last set: the innermost
    for key, value in doc.items():
        if key in declaration.axes and _numbers(value):
            continue
        name = f"{prefix}{key}"
        indexed = declaration.indexed.get(key, inherited)
        if _number(value) is not None:
            yield name, {}, _number(value)
        elif isinstance(value, dict):
            yield from flatten(value, declaration, f"{name}.", context, indexed)
        elif _numbers(value):
            yield from _series(name, value, _axis_of(context, len(value)), indexed, key)
        elif (isinstance(value, list) and value and indexed is not None
              and all(_numbers(v) or v == [] for v in value)):                 # [outer][inner index]
            outer, inner = _axis_of(context, len(value)), indexed
            for i, row in enumerate(value):
                at = {outer[0]: outer[1][i]} if outer else {}
                yield from ((f"{name}" if outer else f"{name}.{i}", {**at, inner: j}, _number(v))
                            for j, v in enumerate(row) if _number(v) is not None)


def _axis_of(context: dict[str, list], n: int) -> tuple[str, list] | None:
    """The innermost declared axis with ``n`` values."""
    for axis, values in reversed(list(context.items())):
        if len(values) == n:
            return axis, values
    return None


def _series(name: str, value: list, axis: tuple[str, list] | None, indexed: str | None, key: str):
    if indexed is not None:
        rows = ((name, {indexed: i}, v) for i, v in enumerate(value))
    elif axis is not None:
        rows = ((name, {axis[0]: axis[1][i]}, v) for i, v in enumerate(value))
    elif key.endswith("_ci") and len(value) == 2:
        rows = ((f"{name}.{end}", {}, v) for end, v in zip(("lo", "hi"), value, strict=True))
    else:
        rows = ((f"{name}.{i}", {}, v) for i, v in enumerate(value))
    yield from ((m, at, _number(v)) for m, at, v in rows if _number(v) is not None)


def tidy_rows(results: dict) -> list[dict]:
    """The tidy table of a ``results.json`` document (see the module docstring)."""
    rows: list[dict] = []

    def add(base: dict, doc: dict, declaration: AttackDeclaration | None = None) -> None:
        for metric, at, value in flatten(doc, declaration):
            rows.append({**base, "metric": metric, **{a: at.get(a) for a in AXES}, "value": value})

    for doc in target_docs(results):
        concept = doc.get("concept")
        for model in ("original", "oracle"):
            if doc.get(model):
                add(_base(concept, model, model, None, None, None, None), doc[model])
        seeds = doc.get("experiment", {}).get("seeds") or [None]
        by_seed = doc.get("baselines_by_seed") or {str(seeds[0]): doc.get("baselines", {})}
        for seed, baselines in by_seed.items():
            for attack, per_model in baselines.items():
                for model, values in per_model.items():
                    if isinstance(values, dict):
                        add(_base(concept, model, model, None, None, None if seed == "None" else int(seed), attack),
                            values, declared(doc, attack))
        settings = doc.get("settings", {})
        for setting, m in doc.get("methods", {}).items():
            info = settings.get(setting, {})
            method = info.get("method") or setting.split("[")[0]
            params = json.dumps(info.get("params", m.get("params")), sort_keys=True)
            base = _base(concept, "unlearned", setting, method, params, info.get("seed"), None)
            add(base, {k: v for k, v in m.items() if k not in ("attacks", "params")})
            for attack, r in m.get("attacks", {}).items():
                add({**base, "attack": attack}, r, declared(doc, attack))
    return rows


def _base(target, model, setting, method, params, seed, attack) -> dict:
    return {"target": target, "model": model, "setting": setting, "method": method, "params": params,
            "seed": seed, "attack": attack}


def write_store(out: Path, results: dict, meta: dict | None = None) -> Path:
    """Write ``results.sqlite`` atomically (a new file, then rename over the old one)."""
    out = Path(out)
    path, tmp = out / STORE, out / f".{STORE}.tmp"
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    try:
        con.execute("CREATE TABLE results (target TEXT, model TEXT NOT NULL, setting TEXT, method TEXT, "
                    "params TEXT, seed INTEGER, attack TEXT, metric TEXT NOT NULL, step INTEGER, layer INTEGER, "
                    "k INTEGER, alpha REAL, bits INTEGER, value REAL)")
        con.executemany(f"INSERT INTO results VALUES ({', '.join('?' * len(COLUMNS))})",
                        [tuple(r[c] for c in COLUMNS) for r in tidy_rows(results)])
        con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        con.executemany("INSERT INTO meta VALUES (?, ?)",
                        [(k, json.dumps(v, sort_keys=True)) for k, v in (meta or {}).items()])
        con.commit()
    except sqlite3.OperationalError as e:  # "database or disk is full" is not an OSError
        tmp.unlink(missing_ok=True)
        if "full" in str(e):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise
    finally:
        con.close()
    os.replace(tmp, path)
    return path


def read_rows(run_dir: Path) -> list[dict]:
    """The tidy rows of a run directory: from ``results.sqlite``, or computed from
    ``results.json`` for run directories that have none (``unlearn-audit audit`` writes none)."""
    from ..errors import UserInputError

    run_dir = Path(run_dir)
    if (run_dir / STORE).is_file():
        con = sqlite3.connect(f"file:{run_dir / STORE}?mode=ro", uri=True)
        try:
            cur = con.execute(f"SELECT {', '.join(COLUMNS)} FROM results ORDER BY rowid")
            return [dict(zip(COLUMNS, r, strict=True)) for r in cur.fetchall()]
        except sqlite3.OperationalError as e:
            if "no such column" not in str(e):
                raise UserInputError(f"{run_dir / STORE} is not a results store ({e}); run the experiment again") from None
            # a store written before the k/alpha/bits columns: the rows again, from results.json
        except sqlite3.DatabaseError as e:
            raise UserInputError(f"{run_dir / STORE} is not a results store ({e}); run the experiment again") from None
        finally:
            con.close()
    return tidy_rows(load_results(run_dir))


def load_results(run_dir: Path) -> dict:
    """``results.json`` of a run directory, or a clear error."""
    from ..errors import UserInputError

    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise UserInputError(f"{run_dir} has no results.json; give a run directory written by "
                             "`unlearn-audit run`, `demo` or `audit`")
    from ..files import read_json

    doc = read_json(path, "results file")
    if not isinstance(doc, dict) or not isinstance(doc.get("targets", doc.get("methods", {})), dict | list):
        raise UserInputError(f"{path} is not a results document (a JSON object with methods or targets); "
                             "run the experiment again to rewrite it")
    return doc
