"""The executors' cost and gain: an 8-cell micro study run with ``local``, and on a local Ray
with 1 and with 2 workers, each as a whole ``unlearn-audit run --fresh`` process, interleaved.

    .venv/bin/python benchmarks/bench_cluster.py [--repeats 3]

Every cell computes with one thread (``threads: 1``, ``cpus_per_cell: 1``), so on 2 cores two
workers do not fight over them, and all three runs compute the same numbers (checked: their
``results.json`` are compared without timings). Printed: the median wall time of each, the
ratio 2 workers / 1 worker (target <= 0.65 on 2 cores; per interleaved pair, and of the medians), and the executor's overhead: per cell,
the median over cells of (submitted-to-returned as the driver saw it, from ``status.json``) -
(the cell's own timings), and the fixed cost, Ray with 1 worker - local - cells x that (starting
Ray and a worker, the worker loading its models; target <= 1 s a cell overall). The shared work
(original's and oracle's references) is the study's serial part, overlapped with the cells'
unlearning when there are 2 workers. The
organism cache must hold the micro organism (any test run or ``organism train --preset micro``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

STUDY = {
    "name": "bench-cluster",
    "subject": {"organism": "micro"},
    "target": "world:0",
    # cells of 5-25 s, mostly unlearning, as in a real study, where a cell's unlearning and
    # attacks outweigh the shared work (the original's and the oracle's references)
    "methods": {"gradient_ascent": {"steps": [100, 200], "lr": 1.0e-4},
                "gradient_difference": {"steps": [100, 150, 200, 250], "lr": 3.0e-4},
                "npo_gd": {"steps": [100, 150]}},
    "attacks": {"rtt": {"checkpoints": [0, 10, 25], "bootstrap": 100},
                "unrelated": {"checkpoints": [0, 10, 25]}, "logit_lens": {}},
    "seeds": [0],
    "agreement": False,
    "threads": 1,
}
ARMS = {"local": ["--executor", "local"], "ray, 1 worker": ["--executor", "ray", "--workers", "1"],
        "ray, 2 workers": ["--executor", "ray", "--workers", "2"]}


def _strip(doc):
    if isinstance(doc, dict):
        return {k: _strip(v) for k, v in doc.items() if k != "timings_s"}
    if isinstance(doc, list):
        return [_strip(v) for v in doc]
    return doc


def _overheads(run_dir: Path) -> list[float]:
    """Per cell: the driver's submitted-to-returned seconds minus the cell's own timings."""
    status = json.loads((run_dir / "status.json").read_text())
    own = {}
    for f in (run_dir / "cells").glob("*.json"):
        doc = json.loads(f.read_text())
        own[doc["key"]] = sum(doc["timings_s"].values())
    return [c["seconds"] - own[k] for k, c in status["cells"].items()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("unlearn-audit"))
    times: dict[str, list[float]] = {a: [] for a in ARMS}
    results: dict[str, dict] = {}
    per_cell: list[float] = []
    serial: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "study.yaml"
        study.write_text(yaml.safe_dump({**STUDY, "executor": {"cpus_per_cell": 1}}))
        for r in range(args.repeats):
            for arm, flags in ARMS.items():
                out = Path(tmp) / arm.replace(" ", "").replace(",", "-")
                start = time.perf_counter()
                p = subprocess.run([exe, "run", str(study), "--out", str(out), "--fresh", "--no-report", *flags],
                                   capture_output=True, text=True, env={**os.environ, "UNLEARN_AUDIT_PROGRESS": "0"})
                took = time.perf_counter() - start
                if p.returncode != 0:
                    sys.exit(f"error: {arm} failed:\n{p.stderr[-2000:]}")
                times[arm].append(took)
                results[arm] = _strip(json.loads((out / "results.json").read_text()))
                if arm == "ray, 1 worker":
                    per_cell.append(statistics.median(_overheads(out)))
                    serial += [t["seconds"] for t in json.loads((out / "status.json").read_text())["shared"].values()]
                print(f"repeat {r + 1} {arm}: {took:.1f} s", file=sys.stderr, flush=True)
    from unlearn_audit.experiment.config import expand, parse_experiment

    cells = len(expand(parse_experiment(STUDY)))
    same = all(results[a] == results["local"] for a in ARMS)
    med = {a: statistics.median(t) for a, t in times.items()}
    print(f"### Executors: an {cells}-cell micro study, local vs a local Ray (`benchmarks/bench_cluster.py`)\n")
    print(f"{os.cpu_count()} cores; threads 1 and cpus_per_cell 1; median of {args.repeats} interleaved whole "
          f"processes each (`unlearn-audit run --fresh`, organism cached); results.json identical across the "
          f"three: **{'yes' if same else 'NO'}**\n")
    print("| executor | wall s (median) | all runs s |")
    print("|---|---|---|")
    for a in ARMS:
        print(f"| {a} | {med[a]:.1f} | {', '.join(f'{t:.1f}' for t in times[a])} |")
    overhead = statistics.median(per_cell)
    fixed = med["ray, 1 worker"] - med["local"] - cells * overhead
    paired = [b / a for a, b in zip(times["ray, 1 worker"], times["ray, 2 workers"], strict=True)]
    print(f"\n- 2 workers / 1 worker (target <= 0.65): median of the per-repeat pairs **{statistics.median(paired):.2f}** "
          f"({', '.join(f'{r:.2f}' for r in paired)}); ratio of the medians {med['ray, 2 workers'] / med['ray, 1 worker']:.2f}. "
          f"The shared work took {statistics.median(serial):.1f} s (median, 1 worker; with 2 the cells unlearn meanwhile)")
    print(f"- executor overhead per cell (driver's submitted-to-returned minus the cell's own timings, median): "
          f"**{overhead:.3f} s** (target <= 1 s)")
    print(f"- fixed cost of the Ray run over local (starting Ray, a fresh worker importing torch and loading "
          f"the models): {fixed:.1f} s, i.e. {(med['ray, 1 worker'] - med['local']) / cells:.2f} s a cell "
          f"over {cells} cells")


if __name__ == "__main__":
    main()
