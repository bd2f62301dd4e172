"""The demo: forget one concept of the organism with one method of each family, attack each, write a run.

    unlearn-audit demo [--methods a,b|all] [--attacks a,b|all] [--seed N] [--out DIR]

It is an experiment like any other (``examples/demo.yaml`` is the same one as a file) and goes
through the same runner: run it again and finished cells are reused; change its arguments and
its run directory starts over.
"""

from __future__ import annotations

from pathlib import Path

from ..api import DEFAULT_ATTACKS
from ..errors import UserInputError
from .config import Experiment, SubjectConfig

# one method per family, so the default demo stays within ~5 minutes on 2 cores; `--methods all`
# runs every registered method (~8 minutes)
DEMO_METHODS = ("none", "retrain", "gradient_ascent", "gradient_difference", "npo_gd", "rmu", "whp",
                "prune_neurons", "control_vector", "memit_empty", "eco")


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


def demo_experiment(preset: str = "default", seed: int = 0, methods: list[str] | None = None,
                    attacks: list[str] | None = None, out: str | Path | None = None,
                    threads: int | None = None, runs: int = 1) -> Experiment:
    """The demo as an experiment: the organism's first concept (the one its oracle never saw),
    each method at its defaults, each attack; ``runs`` relearning runs per model."""
    from ..attacks import get_attack

    attacks = list(attacks or DEFAULT_ATTACKS)
    settings = {a: ({"runs": runs} if runs != 1 and "runs" in get_attack(a).Params.model_fields else {})
                for a in attacks}
    return Experiment(name=f"demo-{preset}-s{seed}", subject=SubjectConfig(organism=preset, seed=seed),
                      targets=["world:0"], methods={m: {} for m in (methods or DEMO_METHODS)},
                      attacks=settings, seeds=[seed], out=str(out or Path("runs") / f"demo-{preset}-s{seed}"),
                      threads=threads)


def run_demo(preset: str = "default", seed: int = 0, methods: list[str] | None = None,
             attacks: list[str] | None = None, out: str | Path | None = None,
             threads: int | None = None, runs: int = 1, fresh: bool = False):
    """Train/load the organism, unlearn its first concept with each method, run the attacks.

    Returns the :class:`~.runner.RunOutcome`: the results (``results.json`` content), the paths
    written (``report`` among them) and any cells that failed.
    """
    from .runner import run_experiment

    exp = demo_experiment(preset, seed, methods, attacks, out, threads, runs)
    extra = {"demo": {"preset": preset, "seed": seed, "methods": list(exp.methods), "attacks": list(exp.attacks)}}
    return run_experiment(exp, fresh=fresh, on_change="fresh", extra=extra)
