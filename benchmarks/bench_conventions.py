"""Issue 15: QA accuracies of the methods whose loss changed to the reference convention,
before (our old convention, still reachable by a named option) and after (the new default), on
the default organism.

    .venv/bin/python benchmarks/bench_conventions.py [--preset default] [--methods dpo,kl]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("UNLEARN_AUDIT_PROGRESS", "0")

# method -> the old convention as options of the new code (the new default is {})
BEFORE = {
    "dpo": {"scale": "1", "retain_weight": 5.0},
    "kl": {"kl_positions": "answer"},
    "npo_kl": {"kl_positions": "answer"},
    "rmu": {"average_over": "real"},
    "memit_empty": {"penalty": "squared"},
    "memit_entropy": {"penalty": "squared", "entropy": "answer"},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="default")
    ap.add_argument("--methods", default=",".join(BEFORE))
    args = ap.parse_args()

    from unlearn_audit.api import target_for
    from unlearn_audit.methods import get_method
    from unlearn_audit.metrics import EvalSuite
    from unlearn_audit.organisms import organism

    full, _ = organism(args.preset, 0)
    target = target_for("world:0", full)
    sets = {k: v for k, v in target.eval_sets().items() if k in ("forget", "forget_heldout", "retain", "unrelated")}
    suite = EvalSuite(full, sets)
    print("| method | convention | forget | forget held-out | retain | unrelated | s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.methods.split(","):
        method = get_method(name)
        for label, values in (("before: " + ", ".join(f"{k}={v}" for k, v in BEFORE[name].items()), BEFORE[name]),
                              ("after (default)", {})):
            start = time.perf_counter()
            acc = suite.accuracies(method.run(full, target, method.params(values)).model)
            row = {"method": name, "params": values, **acc, "seconds": round(time.perf_counter() - start, 1)}
            print(json.dumps(row), flush=True)
            print(f"| {name} | {label} | {acc['forget']:.2f} | {acc['forget_heldout']:.2f} | {acc['retain']:.2f} | "
                  f"{acc['unrelated']:.2f} | {row['seconds']} |", flush=True)


if __name__ == "__main__":
    main()
