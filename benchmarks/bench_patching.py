"""Patching (KRS) speed: the batched implementation vs the straightforward loop.

The straightforward loop re-runs the vanilla and the unlearned model for every window,
intervention and question, one question at a time (``krs_profile_loop``); the audit runs the
vanilla and unlearned models once per chunk of questions and stacks all windows of an
intervention into one batched forward (``krs_profile``). Both give the same numbers (a test
checks it). Each variant runs in its own process, so peak RSS is its own.

    .venv/bin/python benchmarks/bench_patching.py [--preset default] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("UNLEARN_AUDIT_PROGRESS", "0")


def one(preset: str, variant: str, threads: int) -> dict:
    import torch

    from unlearn_audit.api import target_for, unlearn
    from unlearn_audit.attacks.patching import PatchingParams, krs_profile, krs_profile_loop
    from unlearn_audit.organisms import organism

    torch.set_num_threads(threads)
    full, _ = organism(preset, 0)
    target = target_for("world:0", full)
    unlearned = unlearn(full, target, "gradient_difference", steps=30)
    items = target.all_forget_qa
    params = PatchingParams(content_control=False)
    start = time.perf_counter()
    if variant == "batched":
        krs_profile(full, unlearned, items, params)
    else:
        krs_profile_loop(full, unlearned, items, params)
    seconds = time.perf_counter() - start
    return {"variant": variant, "seconds": seconds, "questions": len(items),
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="default")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.preset, args.one, args.threads)))
        return
    rows = {}
    for variant in ("batched", "loop"):
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run([sys.executable, __file__, "--preset", args.preset, "--threads", str(args.threads),
                                  "--one", variant], capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        secs = [r["seconds"] for r in runs]
        rows[variant] = {"median_s": statistics.median(secs), "min_s": min(secs), "max_s": max(secs),
                         "max_rss_mb": max(r["max_rss_mb"] for r in runs), "questions": runs[0]["questions"]}
    speedup = rows["loop"]["median_s"] / rows["batched"]["median_s"]
    print(f"## Patching (KRS), organism:{args.preset}, {rows['batched']['questions']} forget questions, "
          f"4 interventions x every window, {args.threads} threads, median of {args.repeats}")
    print("| implementation | median s | min-max s | peak RSS MB |")
    print("|---|---|---|---|")
    for v, r in rows.items():
        print(f"| {v} | {r['median_s']:.2f} | {r['min_s']:.2f}-{r['max_s']:.2f} | {r['max_rss_mb']:.0f} |")
    print(f"\nspeed-up: {speedup:.1f}x")


if __name__ == "__main__":
    main()
