"""Hyper-parameter sweep of the fine-tuning methods on the organism.

Picks each method's defaults: among settings whose forget QA accuracy (both halves) is at most
0.2, the one with the best unrelated QA accuracy; where no setting gets there (or, for the
non-fine-tuning methods, only by breaking the model: unrelated < 0.5), the one with the largest
unrelated-minus-forget accuracy. Every run is appended to a JSONL file (a
killed sweep resumes where it stopped); the summary is printed as a Markdown table.

    .venv/bin/python benchmarks/sweep_methods.py [--preset default] [--methods npo,kl] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

os.environ.setdefault("UNLEARN_AUDIT_PROGRESS", "0")

GRIDS = {
    "gradient_ascent": {"lr": [3e-5, 1e-4, 3e-4], "steps": [10, 20, 40, 80], "forget_on": ["qa", "both"]},
    "npo": {"beta": [0.1, 1.0, 3.0], "lr": [1e-4, 3e-4], "steps": [20, 40, 80], "forget_on": ["qa", "both"]},
    "gradient_difference": {"lr": [3e-5, 1e-4, 3e-4], "steps": [30, 60, 120], "retain_weight": [1.0, 5.0, 20.0],
                            "forget_on": ["qa", "both"]},
    "kl": {"lr": [3e-5, 1e-4, 3e-4], "steps": [30, 60, 120], "retain_weight": [1.0, 5.0, 20.0],
           "forget_on": ["qa", "both"]},
    "npo_gd": {"beta": [1.0, 3.0], "lr": [1e-4, 3e-4], "steps": [60, 120], "retain_weight": [1.0, 5.0, 20.0],
               "forget_on": ["qa", "both"]},
    # forget_on both only since issue 15's re-run (both won the first sweep, and kl's re-run)
    "npo_kl": {"beta": [1.0, 3.0], "lr": [1e-4, 3e-4], "steps": [60, 120], "retain_weight": [1.0, 5.0, 20.0],
               "forget_on": ["both"]},
    "simnpo": {"beta": [2.5], "lr": [1e-4, 3e-4], "steps": [30, 60, 120], "retain_weight": [1.0, 5.0],
               "forget_on": ["qa", "both"]},
    # retain_weight up to 100: the forget term carries 2/beta (20 at beta 0.1) since issue 15;
    # beta is open-unlearning's 0.1 (configs/trainer/DPO.yaml), the default
    "dpo": {"beta": [0.1], "lr": [1e-4, 3e-4, 1e-3], "steps": [30, 60, 120], "retain_weight": [1.0, 5.0, 20.0, 100.0]},
    "whp": {"lr": [1e-4, 3e-4, 1e-3], "steps": [30, 60]},
    "rmu": {"alpha": [10.0, 100.0, 1200.0], "coeff_scale": [1.0, 4.0], "lr": [1e-3, 3e-3], "steps": [60]},
    "prune_neurons": {"frac": [0.02, 0.05, 0.1, 0.2, 0.3, 0.4], "scope": ["global", "layer"], "rounds": [1, 3]},
    "prune_random": {"frac": [0.02, 0.05, 0.1, 0.2, 0.3, 0.4]},
    "control_vector": {"alpha": [1.0, 2.0, 4.0, 8.0, 16.0], "layer": [1, 2, 3]},
    "memit_empty": {"mom2_weight": [1.0, 10.0, 100.0, 1000.0, 15000.0], "clamp_norm": [0.75, 4.0]},
    "memit_entropy": {"mom2_weight": [1.0, 10.0, 100.0, 1000.0, 15000.0], "clamp_norm": [0.75, 4.0]},
}
FORGET_MAX = 0.2
BROKEN = 0.5
# The fine-tuning methods follow the rule as stated: forget <= 0.2 with the best unrelated
# accuracy, even where that breaks the model (it shows they are not selective). The edits and
# transforms have one strength knob that goes from "nothing" to "everything": for them a
# setting that forgets by breaking the model (unrelated < 0.5) is no default, and the best
# unrelated-minus-forget trade-off is picked instead.
FINE_TUNING = {"gradient_ascent", "npo", "gradient_difference", "kl", "npo_gd", "npo_kl", "simnpo", "dpo", "whp"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="default")
    ap.add_argument("--methods", default=",".join(GRIDS))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    from unlearn_audit.api import target_for
    from unlearn_audit.methods import get_method
    from unlearn_audit.metrics import EvalSuite
    from unlearn_audit.organisms import organism

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or Path(__file__).parent / "results" / f"sweep_{args.preset}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        done = {json.dumps([r["method"], r["params"]], sort_keys=True) for r in map(json.loads, out.read_text().splitlines())}
    full, _ = organism(args.preset, 0)
    target = target_for("world:0", full)
    sets = {k: v for k, v in target.eval_sets().items() if k in ("forget", "forget_heldout", "retain", "unrelated", "forget_completion", "unrelated_completion")}
    suite = EvalSuite(full, sets)
    for name in args.methods.split(","):
        grid = GRIDS[name]
        method = get_method(name)
        for values in itertools.product(*grid.values()):
            params = dict(zip(grid, values, strict=True))
            key = json.dumps([name, params], sort_keys=True)
            if key in done:
                continue
            start = time.perf_counter()
            unlearned = method.run(full, target, method.params(params))
            acc = suite.accuracies(unlearned.model)
            row = {"method": name, "params": params, "seconds": round(time.perf_counter() - start, 2), **acc}
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    summarise(out)


def summarise(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    print("| method | runs | chosen setting | forget | forget held-out | retain | unrelated | forget completion |")
    print("|---|---|---|---|---|---|---|---|")
    for name in GRIDS:
        mine = [r for r in rows if r["method"] == name]
        if not mine:
            continue
        ok = [r for r in mine if max(r["forget"], r["forget_heldout"]) <= FORGET_MAX]
        if name not in FINE_TUNING and ok and max(r["unrelated"] for r in ok) < BROKEN:
            ok = []
        if ok:
            best = max(ok, key=lambda r: (r["unrelated"], r["retain"]))
        else:  # no setting forgets enough: the best trade-off, unrelated kept minus forget left
            best = max(mine, key=lambda r: r["unrelated"] - max(r["forget"], r["forget_heldout"]))
        setting = ", ".join(f"{k}={v}" for k, v in best["params"].items())
        flag = "" if ok else " (no selective setting; best unrelated - forget)"
        print(f"| {name} | {len(mine)} | {setting}{flag} | {best['forget']:.2f} | {best['forget_heldout']:.2f} | "
              f"{best['retain']:.2f} | {best['unrelated']:.2f} | {best['forget_completion']:.2f} |")


if __name__ == "__main__":
    main()
