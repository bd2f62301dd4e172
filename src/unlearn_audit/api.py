"""The Python API that the CLI is a thin layer over.

    from unlearn_audit import organism, load_target, unlearn, audit
    full, oracle = organism("default")
    target = load_target("world:0")
    npo = unlearn(full, target, "npo_gd")
    results = audit(full, {"npo_gd": npo}, target, attacks=["rtt", "unrelated"], oracle=oracle)
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from . import progress
from .data.target import Target, load_target
from .errors import UserInputError
from .subject.organism import organism_world
from .subject.subject import Subject

DEFAULT_ATTACKS = ("rtt", "forget_data", "unrelated", "patching", "logit_lens", "ablation", "probe", "concept_vectors",
                   "quantize", "mia", "weight_distance")  # in_context: --attacks all (or by name)
AGREEMENT_SETS = ("forget", "forget_heldout", "unrelated")


def target_for(spec: str | os.PathLike, subject: Subject | None = None, seed: int = 0) -> Target:
    """Load a target; a ``world:<concept>`` spec naming no preset or seed resolves in the world
    the subject was trained on when the subject is an organism (so ``world:0`` always means the
    first concept of *that* organism's world)."""
    world = organism_world(subject) if subject is not None else None
    return load_target(spec, world=world, seed=seed)


def unlearn(subject: Subject, target: Target, method: str, **params: Any) -> Subject:
    """Apply unlearning method ``method`` (a registered name) to a copy of ``subject``."""
    from .methods import get_method

    m = get_method(method)
    return m.run(subject, target, m.params(params))


class Evaluator:
    """Behavioural evaluation of many subjects on one target, sharing the encoded sets and the
    original model's greedy answers (the reference for ROUGE-L/BLEU agreement)."""

    def __init__(self, original: Subject, target: Target, agreement: bool = True):
        from .metrics.generation import generate_answers
        from .metrics.qa import EvalSuite

        self.target = target
        self.suite = EvalSuite(original, target.eval_sets())
        sets = target.eval_sets()
        self.agreement_sets = {k: sets[k] for k in AGREEMENT_SETS if k in sets} if agreement else {}
        self.reference_answers = {k: generate_answers(original, v) for k, v in self.agreement_sets.items()}
        self.text = target.unrelated_text or target.retain_text

    def __call__(self, subject: Subject) -> dict:
        from .metrics.behaviour import summarise
        from .metrics.generation import agreement, generate_answers
        from .metrics.text import perplexity

        out = summarise(self.suite.run(subject))
        out["agreement_with_original"] = {
            k: agreement(generate_answers(subject, items), self.reference_answers[k])
            for k, items in self.agreement_sets.items()}
        out["perplexity"] = perplexity(subject, self.text[:500]) if self.text else None
        return out


def _check_compatible(original: Subject, others: Mapping[str, Subject | None]) -> None:
    vocab = original.tokenizer.get_vocab()
    for name, s in others.items():
        if s is not None and s.tokenizer.get_vocab() != vocab:
            raise UserInputError(f"{name} uses a different tokenizer from the original; audits compare "
                                 "models token by token, so give models that share one tokenizer")


def audit(original: Subject, unlearned: Subject | Mapping[str, Subject], target: Target,
          attacks: Sequence[str] = DEFAULT_ATTACKS, oracle: Subject | None = None,
          attack_params: Mapping[str, Mapping[str, Any]] | None = None,
          evaluator: Evaluator | None = None) -> dict:
    """Evaluate original, oracle and unlearned subjects and run ``attacks`` on them.

    Args:
        unlearned: one subject, or several by method name.
        attack_params: per attack name, parameter overrides (e.g. ``{"rtt": {"lr": 1e-4}}``).
    Returns:
        A dict with the keys of ``results.json``: subject, concept, original, oracle, methods
        (each with its accuracies and ``attacks``), baselines (original/oracle curves per
        attack), timings_s.
    """
    from .audits import get_audit

    if isinstance(unlearned, Subject):
        unlearned = {unlearned.info.get("method", {}).get("name", "unlearned"): unlearned}
    _check_compatible(original, {**unlearned, "the oracle": oracle})
    specs = [get_audit(a) for a in attacks]
    params = {s.name: s.params((attack_params or {}).get(s.name)) for s in specs}
    timings: dict[str, float] = {}

    start = time.perf_counter()
    evaluator = evaluator or Evaluator(original, target)
    results: dict[str, Any] = {
        "subject": original.name, "concept": target.name,
        "original": evaluator(original),
        "oracle": evaluator(oracle) if oracle is not None else None,
        "methods": {name: {**evaluator(s), "params": s.info.get("method", {}).get("params"), "attacks": {}}
                    for name, s in unlearned.items()},
        "baselines": {},
    }
    timings["evaluate"] = time.perf_counter() - start
    for spec in specs:
        start = time.perf_counter()
        out = spec.run(original, dict(unlearned), oracle, target, params[spec.name])
        for name, r in out["methods"].items():
            results["methods"][name]["attacks"][spec.name] = r
        results["baselines"][spec.name] = out.get("baselines", {})
        timings[spec.name] = time.perf_counter() - start
        progress.log(f"  {spec.name}: {timings[spec.name]:.1f} s")
    results["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    return results
