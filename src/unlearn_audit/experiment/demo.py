"""The demo: forget one concept of the organism with every method, attack each, write a run.

    unlearn-audit demo [--methods a,b|all] [--attacks a,b|all] [--seed N] [--out DIR]
"""

from __future__ import annotations

import time
from pathlib import Path

from .. import progress
from ..api import DEFAULT_ATTACKS, audit, target_for, unlearn
from ..errors import UserInputError
from ..subject.organism import organism
from .rundir import write_run

DEMO_METHODS = ("none", "gradient_ascent", "gradient_difference", "kl", "npo", "npo_gd", "npo_kl")


def parse_list(value: str | None, default: tuple[str, ...], available: list[str], what: str) -> list[str]:
    """``None`` -> default; ``all`` -> every available name; else a comma list, validated."""
    if value is None:
        return list(default)
    if value.strip() == "all":
        return list(available)
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise UserInputError(f"unknown {what} {', '.join(unknown) or repr(value)}; choose from: "
                             f"{', '.join(available)} (or all)")
    return names


def run_demo(preset: str = "default", seed: int = 0, methods: list[str] | None = None,
             attacks: list[str] | None = None, out: str | Path | None = None,
             threads: int | None = None, seeds: int = 1) -> tuple[dict, dict[str, Path]]:
    """Train/load the organism, unlearn its first concept with each method, run the attacks.

    Returns the results (``results.json`` content) and the paths written.
    """
    from ..subject.subject import set_threads

    set_threads(threads)
    methods = list(methods or DEMO_METHODS)
    attacks = list(attacks or DEFAULT_ATTACKS)
    start = time.perf_counter()
    full, oracle = organism(preset, seed, threads=threads)
    removed = oracle.info["organism"]["removed_concept"]
    target = target_for(f"world:{removed}", full)
    timings = {"organism": time.perf_counter() - start}
    unlearned = {}
    for name in methods:
        t = time.perf_counter()
        unlearned[name] = unlearn(full, target, name, seed=seed)
        timings[f"unlearn:{name}"] = time.perf_counter() - t
    progress.log(f"unlearned '{removed}' with {len(methods)} methods in "
                 f"{sum(v for k, v in timings.items() if k.startswith('unlearn')):.0f} s")
    from ..audits import get_audit

    shared = {"seed": seed, "seeds": seeds}
    attack_params = {a: {k: v for k, v in shared.items() if k in get_audit(a).Params.model_fields}
                     for a in attacks}
    results = audit(full, unlearned, target, attacks=attacks, oracle=oracle, attack_params=attack_params)
    results["timings_s"] = {**{k: round(v, 2) for k, v in timings.items()}, **results["timings_s"]}
    results["timings_s"]["total"] = round(time.perf_counter() - start, 2)
    results["demo"] = {"preset": preset, "seed": seed, "methods": methods, "attacks": attacks}
    run_dir = Path(out or Path("runs") / f"demo-{preset}-s{seed}")
    paths = write_run(run_dir, results)
    return results, paths


# attacks whose table column is not residual/recovery: attack -> (result key, column label)
HEADLINES = {"patching": ("recovery", "KRS"), "weight_distance": ("relative_change", "rel. Δw")}


def summary_rows(results: dict, attacks: list[str]) -> tuple[list[str], list[list]]:
    """The demo table: accuracies, then one column per attack: its residual knowledge (its
    recovery when there is no oracle or the attack has no residual), or the attack's own
    headline number (:data:`HEADLINES`: patching's best KRS, weight_distance's relative change)."""
    has_oracle = bool(results.get("oracle"))
    methods = results["methods"].values()

    def key(attack):
        if attack in HEADLINES:
            return HEADLINES[attack][0]
        if has_oracle and any(m["attacks"].get(attack, {}).get("residual") is not None for m in methods):
            return "residual"
        return "recovery"

    keys = {a: key(a) for a in attacks}
    cols = ["model", "forget", "held-out", "forget compl.", "retain", "unrelated"]
    cols += [f"{a} {HEADLINES[a][1] if a in HEADLINES else keys[a]}" for a in attacks]
    margin = "rtt" in attacks and "unrelated" in attacks
    if margin:
        cols.append(f"rtt − unrelated {keys['rtt']}")

    def accs(r):
        compl = r["sets"].get("forget_completion", {}).get("acc")
        return [r["forget_acc"], r["forget_heldout_acc"], compl, r["retain_acc"], r["unrelated_acc"]]

    rows = [["original", *accs(results["original"])] + [None] * (len(cols) - 6)]
    if has_oracle:
        baselines = results.get("baselines", {})
        own = [baselines.get(a, {}).get("oracle", {}).get(keys[a]) if a in HEADLINES else None for a in attacks]
        rows.append(["oracle", *accs(results["oracle"]), *own] + [None] * (len(cols) - 6 - len(attacks)))
    for name, m in results["methods"].items():
        row = [name, *accs(m), *[m["attacks"].get(a, {}).get(keys[a]) for a in attacks]]
        if margin:
            a, b = m["attacks"]["rtt"].get(keys["rtt"]), m["attacks"]["unrelated"].get(keys["rtt"])
            row.append(None if a is None or b is None else a - b)
        rows.append(row)
    return cols, rows
