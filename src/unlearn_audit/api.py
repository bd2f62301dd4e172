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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import faults, progress
from .data.target import Target, load_target
from .errors import UserInputError
from .organisms import organism_world
from .results.schema import target_document
from .subject.residency import resident
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


def unlearn(subject: Subject, target: Target, method: str, params: Any = None, **overrides: Any) -> Subject:
    """Apply unlearning method ``method`` (a registered name) to a copy of ``subject``, with its
    validated ``params`` object (``get_method(method).params(...)``) or keyword overrides of its
    defaults (``unlearn(s, t, "npo_gd", beta=3)``)."""
    from .methods import get_method

    m = get_method(method)
    if params is not None and overrides:
        raise UserInputError("unlearn: give params or keyword overrides, not both")
    return m.run(subject, target, m.params(params if params is not None else overrides))


class Evaluator:
    """Behavioural evaluation of many subjects on one target, sharing the encoded sets and the
    original model's greedy answers (the reference for ROUGE-L/BLEU agreement)."""

    def __init__(self, original: Subject, target: Target, agreement: bool = True, utility=None,
                 reference_answers: Mapping[str, list[str]] | None = None):
        """``utility``: a :class:`~unlearn_audit.metrics.utility.UtilityConfig` (lm-eval tasks
        scored on every model, under ``utility``), or None. ``reference_answers``: the
        original's greedy answers per agreement set as :func:`references` stored them (a worker
        of a cluster run takes them from the shared work instead of generating them again)."""
        from .metrics.generation import generate_answers
        from .metrics.qa import EvalSuite

        self.target = target
        self.utility = utility
        if utility is not None:
            from .metrics.utility import task_manager

            self.tasks = task_manager(utility)  # unknown tasks fail before any model is scored
        sets = target.eval_sets()
        self.agreement_sets = {k: sets[k] for k in AGREEMENT_SETS if k in sets} if agreement else {}
        with resident(original.model):
            self.suite = EvalSuite(original, sets)
            stored = reference_answers or {}
            self.reference_answers = {k: list(stored[k]) if len(stored.get(k, ())) == len(v) else
                                      generate_answers(original, v) for k, v in self.agreement_sets.items()}
        self.text = target.unrelated_text or target.retain_text
        # TOFU's forget truth ratios on a tofu: target, or on a world target with other entities'
        # values as the perturbed answers (data/benchmarks/world_truth.py); forget quality
        # against the oracle's is added where a target's document is assembled
        from .data.benchmarks.world_truth import truth_rows

        self.truth = truth_rows(target).get("forget")

    def __call__(self, subject: Subject) -> dict:
        from .metrics.behaviour import summarise
        from .metrics.generation import agreement, generate_answers
        from .metrics.text import perplexity

        with resident(subject.model):
            out = summarise(self.suite.run(subject))
            out["agreement_with_original"] = {
                k: agreement(generate_answers(subject, items), self.reference_answers[k])
                for k, items in self.agreement_sets.items()}
            out["perplexity"] = perplexity(subject, self.text[:500]) if self.text else None
            if self.truth:
                from .metrics.tofu import item_nlls, truth_ratio_score, truth_ratios

                nll = item_nlls(subject, self.truth)
                ratios = truth_ratios(nll["paraphrased"], nll["perturbed"])
                out["tofu"] = {"forget_truth_ratio": truth_ratio_score(ratios, forget=True),
                               "forget_truth_ratios": ratios.tolist()}
            if self.utility is not None:
                from .metrics.utility import lm_eval_scores

                out["utility"] = lm_eval_scores(subject, self.utility, self.tasks)
        return out


def _check_compatible(original: Subject, others: Mapping[str, Subject | None]) -> None:
    vocab = original.tokenizer.get_vocab()
    for name, s in others.items():
        if s is not None and s.tokenizer.get_vocab() != vocab:
            raise UserInputError(f"{name} uses a different tokenizer from the original; attacks compare "
                                 "models token by token, so give models that share one tokenizer")


def attack_specs(attacks: Sequence[str], attack_params: Mapping[str, Mapping[str, Any]] | None = None):
    """``[(attack, validated params)]`` for attack names and per-attack parameter overrides."""
    from .attacks import get_attack

    specs = [get_attack(a) for a in attacks]
    return [(s, s.params((attack_params or {}).get(s.name))) for s in specs]


def references(original: Subject, target: Target, attacks: Sequence[str] = DEFAULT_ATTACKS,
               oracle: Subject | None = None, attack_params: Mapping[str, Mapping[str, Any]] | None = None,
               evaluator: Evaluator | None = None) -> dict:
    """What every unlearned model audited on ``target`` shares, computed once: the evaluation of
    the original and the oracle, and per attack its references (e.g. the relearning curves of
    original and oracle). JSON values only, so an experiment can store them and reuse them when
    it resumes. Pass the result to :func:`audit` as ``shared``.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    evaluator = evaluator or Evaluator(original, target)
    out: dict[str, Any] = {"subject": original.name, "concept": target.name,
                           "original": evaluator(original),
                           "oracle": evaluator(oracle) if oracle is not None else None, "attacks": {},
                           "reference_answers": evaluator.reference_answers}
    timings["evaluate"] = time.perf_counter() - start
    for attack, params in attack_specs(attacks, attack_params):
        start = time.perf_counter()
        out["attacks"][attack.name] = attack.references(original, oracle, target, params)
        timings[f"{attack.name} references"] = time.perf_counter() - start
    out["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    return out


def audit(original: Subject, unlearned: Subject | Mapping[str, Subject], target: Target,
          attacks: Sequence[str] = DEFAULT_ATTACKS, oracle: Subject | None = None,
          attack_params: Mapping[str, Mapping[str, Any]] | None = None,
          evaluator: Evaluator | None = None, shared: dict | None = None,
          on_attack: Callable[[str], None] | None = None) -> dict:
    """Evaluate original, oracle and unlearned subjects and run ``attacks`` on them.

    Args:
        unlearned: one subject, or several by method name.
        attack_params: per attack name, parameter overrides (e.g. ``{"rtt": {"lr": 1e-4}}``) or
            a validated params object (``get_attack("rtt").params(...)``).
        shared: the result of :func:`references` for the same original, oracle, target, attacks
            and parameters (computed here when not given).
        on_attack: called with each attack's name as it starts (progress displays).
    Returns:
        One target's results document (:class:`unlearn_audit.results.schema.TargetResult`,
        ``docs/results.md``): subject, concept, original, oracle, methods (each with its
        accuracies and ``attacks``), baselines (original/oracle measurements per attack),
        timings_s, declarations.
    """
    if isinstance(unlearned, Subject):
        unlearned = {unlearned.info.get("method", {}).get("name", "unlearned"): unlearned}
    _check_compatible(original, {**unlearned, "the oracle": oracle})
    specs = attack_specs(attacks, attack_params)  # validate before any work
    timings: dict[str, float] = {}
    evaluator = evaluator or Evaluator(original, target)
    if shared is None:
        shared = references(original, target, attacks, oracle, attack_params, evaluator)
        timings.update(shared["timings_s"])

    start = time.perf_counter()
    methods = {name: {**evaluator(s), "params": s.info.get("method", {}).get("params"), "attacks": {}}
               for name, s in unlearned.items()}
    baselines: dict[str, Any] = {}
    timings["evaluate"] = timings.get("evaluate", 0.0) + time.perf_counter() - start
    for spec, params in specs:
        if on_attack is not None:
            on_attack(spec.name)
        faults.point("attack")
        start = time.perf_counter()
        # shared work stored by an older version may lack an attack's references: then it computes them
        out = spec.run(original, dict(unlearned), oracle, target, params, shared["attacks"].get(spec.name))
        for name, r in out["methods"].items():
            methods[name]["attacks"][spec.name] = r
        baselines[spec.name] = out.get("baselines", {})
        timings[spec.name] = timings.get(f"{spec.name} references", 0.0) + time.perf_counter() - start
        timings.pop(f"{spec.name} references", None)
        progress.log(f"  {spec.name}: {timings[spec.name]:.1f} s")
    from .metrics.tofu import add_forget_quality

    add_forget_quality([shared["original"], shared["oracle"], *methods.values()], shared["oracle"])
    return target_document(shared, methods, baselines, {s.name: s.declaration for s, _ in specs},
                           {k: round(v, 2) for k, v in timings.items()})
