"""What SISA costs on the organism: utility of the S-shard ensemble and compute of unlearning.

For each S: the ensemble's QA accuracy (training phrasing) on the removed concept and on the
others, against the monolithic organism; the steps of training every constituent; and after
unlearning the first concept, its accuracies and the steps retrained (over all SISA training,
and over the monolithic oracle's training). Trains what the cache lacks.

    .venv/bin/python benchmarks/sisa_sharding.py --preset micro --shards 1,2,4,8 [--slices 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time

from unlearn_audit.organisms import concept_accuracy, organism, organism_world
from unlearn_audit.sisa import sisa


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="micro")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", default="1,2,4,8")
    ap.add_argument("--slices", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    full, oracle = organism(args.preset, args.seed, threads=args.threads)
    world = organism_world(full)
    removed = oracle.info["organism"]["removed_concept"]

    def split(acc: dict) -> tuple[float, float]:
        others = [v for c, v in acc.items() if c != removed]
        return acc[removed], sum(others) / len(others)

    rows = [{"model": "monolithic", "shards": None, "acc": split(concept_accuracy(full, world)),
             "steps": full.info["organism"]["steps"], "unlearned_acc": split(concept_accuracy(oracle, world)),
             "retrain_steps": oracle.info["organism"]["steps"],
             "retrain_fraction": oracle.info["organism"]["steps"] / full.info["organism"]["steps"], "vs_oracle": 1.0}]
    for s in map(int, args.shards.split(",")):
        start = time.perf_counter()
        ensemble = sisa(args.preset, args.seed, s, args.slices, threads=args.threads)
        unlearned = sisa(args.preset, args.seed, s, args.slices, removed, threads=args.threads)
        info = unlearned.info["sisa"]
        rows.append({"model": f"SISA S={s} R={args.slices}", "shards": s, "acc": split(concept_accuracy(ensemble, world)),
                     "steps": sum(info["constituent_steps"]), "unlearned_acc": split(concept_accuracy(unlearned, world)),
                     "retrain_steps": info["retrain_steps"], "retrained": len(info["retrained"]),
                     "retrain_fraction": info["retrain_fraction"], "vs_oracle": info["vs_oracle"],
                     "seconds": round(time.perf_counter() - start, 1)})
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{args.preset} organism, seed {args.seed}; removed concept {removed}")
    print("| model | forget acc | others acc | training steps | unlearned: forget | others | steps retrained "
          "| / all its training steps | / oracle steps |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['acc'][0]:.3f} | {r['acc'][1]:.3f} | {r['steps']} | {r['unlearned_acc'][0]:.3f} "
              f"| {r['unlearned_acc'][1]:.3f} | {r['retrain_steps']}"
              f"{' (' + str(r['retrained']) + ' constituents)' if 'retrained' in r else ''} "
              f"| {r['retrain_fraction']:.2f} | {r['vs_oracle']:.2f} |")


if __name__ == "__main__":
    main()
