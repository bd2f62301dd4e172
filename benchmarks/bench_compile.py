"""Does ``torch.compile`` pay for an unlearning run? Eager vs compiled steps, compile time included.

For gradient ascent and NPO+GD on the reference shape and on the default organism (their real
batches, whose widths vary), the same seeded run of ``--steps`` steps through the shared loop,
once with the eager model and once with ``torch.compile(model)`` (default mode, inductor)
doing the forward passes. Prints per run the median step after the first few (steady state),
the first compiled step (compile time; widths that change trigger recompiles later), and the
run length from which compiling comes out ahead. Inductor's on-disk cache starts empty (a
first run; ``--warm-cache`` keeps it), and one process compiles both methods, so the second
reuses graphs of the same shapes, as a sweep would:

    break-even steps = (compiled total - eager total) / (eager step - compiled step) + steps

    .venv/bin/python benchmarks/bench_compile.py [--threads 2] [--steps 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("UNLEARN_AUDIT_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_steps import REF_ROWS, machine, organism_data, reference_subject, run_steps, synthetic_qa  # noqa: E402

METHODS = ("gradient_ascent", "npo_gd")


def compare(label: str, subject, data: dict[str, tuple[dict, list[dict], dict]], steps: int) -> None:
    import torch
    import torch._dynamo

    from unlearn_audit.methods import get_method

    for name in METHODS:
        forget, retain, overrides = data[name]
        method = get_method(name)
        params = method.params({**overrides, "steps": steps})
        run_steps(method, method.params({**overrides, "steps": 5}), subject, forget, retain, 5, 0)  # warm-up
        eager = run_steps(method, params, subject, forget, retain, steps, 0)
        torch._dynamo.reset()
        comp = run_steps(method, params, subject, forget, retain, steps, 0, wrap=torch.compile)
        e_step, c_step = statistics.median(eager[5:]), statistics.median(comp[10:])
        extra = sum(comp) - sum(eager)
        gain = e_step - c_step
        even = f"{extra / gain + steps:,.0f}" if gain > 0 else "never (compiled steps are not faster)"
        print(f"| {label} | {name} | {e_step * 1e3:.1f} | {c_step * 1e3:.1f} | {comp[0]:.1f} | "
              f"{sum(eager):.1f} | {sum(comp):.1f} | {even} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warm-cache", action="store_true",
                    help="keep inductor's on-disk cache (default: a fresh one, so compile times are a first run's)")
    args = ap.parse_args()
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    import torch

    from unlearn_audit.api import target_for
    from unlearn_audit.organisms import organism

    torch.set_num_threads(args.threads)
    print(f"## torch.compile vs eager ({machine()}), {args.threads} threads, {time.strftime('%Y-%m-%d')}\n")
    print(f"One seeded run of {args.steps} steps each; step times are medians after the first 5 (eager) / "
          f"10 (compiled) steps; inductor cache {'warm' if args.warm_cache else 'empty at the start'}.\n")
    print("| model | method | eager step ms | compiled step ms | first compiled step s | eager run s | "
          "compiled run s | compiling pays from (steps) |")
    print("|---|---|---|---|---|---|---|---|")
    ref = reference_subject()
    shape = {"batch_size": REF_ROWS, "lr": 1e-5}
    ref_data = {name: (synthetic_qa(64, 442, 0), [synthetic_qa(64, 442, 1)], shape) for name in METHODS}
    compare("reference shape", ref, ref_data, args.steps)
    full, _ = organism("default", 0)
    target = target_for("world:0", full)
    org_data = {name: (*organism_data(full, target, name), {}) for name in METHODS}
    compare("default organism", full, org_data, args.steps)


if __name__ == "__main__":
    main()
