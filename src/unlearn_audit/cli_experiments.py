"""The experiment commands: ``run``, ``results``, ``report``, ``compare``.

    unlearn-audit run experiment.yaml [--fresh] [--out DIR] [--executor ray --workers 8] [--dry-run] [--json]
    unlearn-audit status RUN_DIR [--json]
    unlearn-audit results RUN_DIR [--format table|csv|json] [--metric GLOB] [--attack A]
    unlearn-audit report RUN_DIR
    unlearn-audit compare RUN_A RUN_B [--changed] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .cli_output import JsonOpt, ThreadsOpt, emit_json, table


def run_cmd(
    experiment: Annotated[Path, typer.Argument(help="Experiment file (YAML; see examples/ and docs/experiments.md).")],
    resume: Annotated[bool, typer.Option("--resume/--fresh", help="Reuse finished cells (default), or recompute everything.")] = True,
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default: the file's out, else runs/<name>).")] = None,
    threads: ThreadsOpt = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html at the end.")] = True,
    executor: Annotated[str | None, typer.Option("--executor", help="Where cells run: local (this process, the "
                                                 "default), ray or slurm; overrides the file's executor.kind "
                                                 "(docs/cluster.md).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Cells running at once on ray or slurm "
                                                "(the file's executor.max_workers).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate the file, its targets and --out, list the "
                                          "cells, and stop (loads no model, writes nothing).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run every cell of an experiment file (resuming a killed run), then write results and report."""
    from .errors import UserInputError
    from .experiment.config import expand, load_experiment
    from .experiment.runner import run_experiment
    from .files import prepare_output_dir
    from .report.outputs import write_outputs

    exp, text = load_experiment(experiment)
    if threads is not None:
        exp = exp.model_copy(update={"threads": threads})
    if executor is not None or workers is not None:
        kinds = ("local", "ray", "slurm")
        if executor is not None and executor not in kinds:
            raise UserInputError(f"--executor {executor!r} is not one of: {', '.join(kinds)}")
        changes = {"kind": executor} if executor is not None else {}
        exp = exp.model_copy(update={"executor": exp.executor.model_copy(
            update={**changes, **({"max_workers": workers} if workers is not None else {})})})
    if dry_run:
        prepare_output_dir(out or exp.run_dir, "run", create=False)
        cells = [{"target": c.target, "setting": c.setting, "method": c.method, "seed": c.seed, "key": c.key}
                 for c in expand(exp)]
        if as_json:
            emit_json({"name": exp.name, "run_dir": str(out or exp.run_dir), "cells": cells})
        else:
            table(f"{exp.name}: {len(cells)} cells, attacks {', '.join(exp.attacks)}",
                  ["target", "setting", "seed", "key"], [[c["target"], c["setting"], c["seed"], c["key"]] for c in cells])
        return
    run = run_experiment(exp, text, out=out, fresh=not resume)
    run_dir = run.paths["results"].parent
    run.paths.update(write_outputs(run_dir, run.results, report))
    if as_json:
        emit_json({**run.results, "run_dir": str(run_dir), "computed": run.computed, "reused": run.reused})
    else:
        summary_tables(run.results)
        print(f"run directory: {run_dir} ({len(run.computed)} cells computed, {len(run.reused)} reused)",
              file=sys.stderr)
    if "report" in run.paths:
        print(f"report: {run.paths['report']}", file=sys.stderr)
    run.raise_if_failed()


def summary_tables(results: dict) -> None:
    from .report.html import attacks_of
    from .report.tables import summary_rows
    from .results.store import target_docs

    for doc in target_docs(results):
        cols, rows = summary_rows(doc, attacks_of(doc))
        table(f"unlearning '{doc['concept']}' ({doc['subject']})", cols, rows)


def results_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    metric: Annotated[str | None, typer.Option("--metric", help="Only metrics matching this glob, e.g. '*acc'.")] = None,
    attack: Annotated[str | None, typer.Option("--attack", help="Only this attack ('none': the evaluation before attacks).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the tidy results table (one row per cell x metric x step) of a run directory."""
    import csv
    import fnmatch

    from .errors import UserInputError
    from .results.store import COLUMNS, read_rows

    fmt = "json" if as_json else fmt
    if fmt not in ("table", "csv", "json"):
        raise UserInputError(f"--format {fmt!r} is not one of: table, csv, json")
    rows = read_rows(run_dir)
    if metric:
        rows = [r for r in rows if fnmatch.fnmatchcase(r["metric"], metric)]
    if attack:
        rows = [r for r in rows if (r["attack"] or "none") == attack]
    if fmt == "json":
        emit_json(rows)
    elif fmt == "csv":
        w = csv.DictWriter(sys.stdout, fieldnames=list(COLUMNS), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    else:
        shown = [c for c in COLUMNS if c != "params"]
        table(f"{run_dir}: {len(rows)} rows", shown, [[r[c] for c in shown] for r in rows])


def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    as_json: JsonOpt = False,
) -> None:
    """Write report.html (self-contained) and figures/ (PNG and SVG) for a run directory."""
    import time

    from .report.html import write_report

    start = time.perf_counter()
    path = write_report(run_dir)
    took = time.perf_counter() - start
    if as_json:
        emit_json({"report": str(path), "figures": sorted(str(p) for p in (path.parent / "figures").iterdir()),
                    "seconds": round(took, 2)})
    print(f"report: {path} ({took:.1f} s)", file=sys.stderr)


def compare_cmd(
    run_a: Annotated[Path, typer.Argument(help="The first run directory.")],
    run_b: Annotated[Path, typer.Argument(help="The second run directory.")],
    changed: Annotated[bool, typer.Option("--changed", help="Only rows whose values differ.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The headline numbers (accuracies, recovery, residual per attack) of two runs and B - A."""
    from .report.tables import compare_rows
    from .results.store import load_results

    rows = compare_rows(load_results(run_a), load_results(run_b))
    total, differ = len(rows), sum(1 for r in rows if r["a"] != r["b"])
    if changed:
        rows = [r for r in rows if r["a"] != r["b"]]
    if as_json:
        emit_json({"a": str(run_a), "b": str(run_b), "rows": rows})
        return
    table(f"A = {run_a}, B = {run_b}", ["target", "model", "metric", "A", "B", "B − A"],
          [[r["target"], r["model"], r["metric"], r["a"], r["b"], r["diff"]] for r in rows])
    print(f"{differ} of {total} numbers differ", file=sys.stderr)


def status_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    as_json: JsonOpt = False,
) -> None:
    """Where each cell of a run stands (done, running, failed, pending), from its status.json."""
    from .experiment.status import read_status

    doc = read_status(run_dir)
    if as_json:
        emit_json(doc)
        return
    counts = doc["counts"]
    rows = [[c["setting"], c["target"], c["seed"], c["state"], c["attempts"], c.get("worker", ""),
             (c.get("error") or "")[:80]] for c in doc["cells"].values()]
    table(f"{run_dir}: " + ", ".join(f"{counts[k]} {k}" for k in ("done", "running", "failed", "pending")),
          ["setting", "target", "seed", "state", "attempts", "worker", "last error"], rows)
    when = f"executor {doc['executor']}, updated {doc['updated']}"
    if doc["driver_running"]:
        print(f"{when}; the driver (pid {doc['driver_pid']}) is running", file=sys.stderr)
    else:
        stale = " (cells marked running were running when it stopped)" if counts["running"] else ""
        print(f"{when}; no driver is running{stale}: unlearn-audit run resumes it", file=sys.stderr)


def register(app: typer.Typer) -> None:
    """Add the experiment commands to ``app``."""
    app.command("run")(run_cmd)
    app.command("results")(results_cmd)
    app.command("report")(report_cmd)
    app.command("compare")(compare_cmd)
    app.command("status")(status_cmd)
