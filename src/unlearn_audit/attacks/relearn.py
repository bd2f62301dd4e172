"""Relearning attacks: fine-tune the unlearned model briefly and see how much comes back.

Three attacks share one implementation; original, unlearned and oracle models are trained with
the *same* schedule and data, copies each (the inputs are never touched), and evaluated at
steps 0, 1, 2, 5, 10, 20, 50 (configurable):

- ``rtt`` — retraining on T (Deeb & Roger 2024, "Do Unlearning Methods Remove Information from
  Language Model Weights?"): fine-tune on the concept's *train half* (QA, answer-only loss),
  evaluate on the *held-out half*, whose facts the training data does not contain. Recovery of
  the held-out half means the knowledge was still in the weights.
- ``forget_data`` — relearning on the forget texts themselves (speed of relearning; Lo, Cohen &
  Barez 2024 relearn pruned concepts this way); evaluated on all forget QA.
- ``unrelated`` — fine-tuning on retain text only (Łucki et al. 2024: a few unrelated examples
  undo RMU); evaluated on the held-out half. It is the control for ``rtt``: a model that was
  merely *damaged* recovers under both; one that *hides* the concept recovers much more under
  ``rtt`` than under ``unrelated`` and than the oracle (the targeted margin).

Per method and attack: recovery and residual knowledge at the last step (definitions in
:mod:`unlearn_audit.metrics.recovery`) with bootstrap 95% intervals over evaluation items,
steps to reach 50% of the original's accuracy, the area under the recovery curve (mean
recovery over the run), and the curves themselves. ``metric`` chooses the per-item score the
curves and ratios are computed on (exact match by default; ROUGE-L, answer probability, TOFU's
truth ratio or WMDP's multiple-choice accuracy for benchmark targets, :mod:`unlearn_audit.metrics.itemwise`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import Field, model_validator

from ..data.encode import encode_qa, encode_texts
from ..errors import UserInputError
from ..metrics.itemwise import ItemScorer, chosen_scorer
from ..metrics.likelihood import mean_token_nll
from ..metrics.qa import EvalSuite
from ..metrics.recovery import bootstrap_intervals, curve_auc, recovery, residual, steps_to_fraction
from ..params import (
    MAX_STEPS,
    GradAccumSteps,
    GradientCheckpointing,
    ItemMetric,
    LoraAlpha,
    LoraDropout,
    LoraR,
    LoraTargets,
    MaxLength,
    MaxNewTokens,
    lora_settings,
    renamed_params,
    train_settings,
)
from ..results.schema import AttackDeclaration
from ..subject.residency import resident
from ..training import TrainConfig, seed_everything, shuffled_minibatches, train
from .base import Attack, AttackParams, is_ensemble, register_attack
from .reemergence import Tracker, concept_probe, saliency


class RelearnParams(AttackParams):
    # the old names still work, with a warning (a checkpoint list is no step count, and runs are
    # not the experiment's seeds)
    RENAMED: ClassVar[dict[str, str]] = {"steps": "checkpoints", "seeds": "runs"}

    checkpoints: list[Annotated[int, Field(ge=0, le=MAX_STEPS)]] = Field(
        [0, 1, 2, 5, 10, 20, 50], min_length=1,
        description="Optimiser steps at which to evaluate (0: before relearning); the last is the run's length.")
    lr: float = Field(3e-4, gt=0, description="Relearning learning rate (AdamW, constant).")
    batch_size: int = Field(16, ge=1)
    grad_accum_steps: GradAccumSteps = 1
    gradient_checkpointing: GradientCheckpointing = False
    max_length: MaxLength = 256
    lora_r: LoraR = 0
    lora_alpha: LoraAlpha = None
    lora_dropout: LoraDropout = 0.0
    lora_targets: LoraTargets = None
    runs: int = Field(1, ge=1, le=1000, description="Relearning runs, with seeds seed..seed+runs-1; curves are averaged.")
    bootstrap: int = Field(1000, ge=0, le=1_000_000, description="Bootstrap resamples for the intervals (0: none).")
    reemergence: bool = Field(True, description="Track concept neurons at every checkpoint (first seed).")
    top_frac: float = Field(0.02, gt=0, lt=1, description="Fraction of MLP neurons in a model's top concept set.")
    metric: ItemMetric = "exact_match"
    max_new_tokens: MaxNewTokens = 32

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        return renamed_params(cls.RENAMED, data, "relearning")


@dataclass(frozen=True)
class Relearning:
    train_on: str          # forget_qa | forget_text | retain_text
    eval_sets: tuple[str, ...]


RELEARNING = {
    "rtt": Relearning("forget_qa", ("forget_heldout",)),
    "forget_data": Relearning("forget_text", ("forget", "forget_heldout")),
    "unrelated": Relearning("retain_text", ("forget_heldout",)),
}
WATCH = ("unrelated",)  # also tracked at every checkpoint, to see damage or repair


def _train_data(subject, target, attack: Relearning, max_length: int = 256):
    tok = subject.tokenizer
    if attack.train_on == "forget_qa":
        return encode_qa(tok, target.forget_qa, subject.prompt, subject.answer_eos)
    texts = target.forget_text if attack.train_on == "forget_text" else target.retain_text
    if texts:
        return encode_texts(tok, texts, max_length)
    qa = target.all_forget_qa if attack.train_on == "forget_text" else target.retain_qa
    return encode_qa(tok, qa, subject.prompt, subject.answer_eos)


def relearn_curve(subject, train_data, suite: EvalSuite, params: RelearnParams, seed: int,
                  label: str, on_checkpoint=None, scorer: ItemScorer | None = None) -> dict:
    """Fine-tune a copy of ``subject`` and score ``suite`` at every checkpoint (and call
    ``on_checkpoint(model)`` there, e.g. to track concept neurons).

    Returns ``{"steps": [...], "correct": {set: (n_checkpoints, n_items) array}}``: exact-match
    correctness, or the per-item scores of ``scorer`` (a chosen metric) when given.
    """
    checkpoints = sorted(set(params.checkpoints))  # each 0..MAX_STEPS (RelearnParams)
    seed_everything(seed)
    # keeps the subject's prompt template and inference interventions; under LoRA it shares the
    # subject's weights and trains adapters (a subject with adapters: a copy of its own); full
    # relearning of a subject with adapters trains a merged copy, every weight
    lora = lora_settings(params)
    attacked = subject.copy(lora=lora, merge=lora is None)
    model = attacked.model
    correct: dict[str, list[np.ndarray]] = {k: [] for k in suite.names}

    def record() -> None:
        scores = scorer(attacked) if scorer is not None else {k: s.correct.numpy() for k, s in suite.run(attacked).items()}
        for k, v in scores.items():
            correct[k].append(v)
        if on_checkpoint is not None:
            on_checkpoint(model)

    def on_step(step: int, loss: float) -> None:
        if step in wanted:
            record()

    wanted = set(checkpoints)
    with resident(model):  # the subject it copies (and every other model) off the device meanwhile
        if checkpoints[0] == 0:
            record()
        if checkpoints[-1] > 0:
            batches = shuffled_minibatches(train_data, params.batch_size, seed, attacked.device)
            train(model, lambda b: mean_token_nll(model, b), batches,
                  TrainConfig(steps=checkpoints[-1], lr=params.lr, seed=seed, **train_settings(params)),
                  on_step=on_step, description=f"relearning {label}")
    return {"steps": checkpoints, "correct": {k: np.stack(v) for k, v in correct.items()}}


def _pooled(curve: dict, sets: tuple[str, ...]) -> np.ndarray:
    """(n_checkpoints, n_items) correctness over the union of ``sets``, averaged over seeds."""
    return np.concatenate([curve["correct"][k] for k in sets], axis=1).astype(float)


def _mean_over_seeds(curves: list[dict]) -> dict:
    return {"steps": curves[0]["steps"],
            "correct": {k: np.mean([c["correct"][k] for c in curves], axis=0) for k in curves[0]["correct"]}}


REEMERGENCE_LAYERS: dict = {"saliency_by_layer": "layer", "new_top_by_layer": "layer"}


class Relearn(Attack):
    """One relearning attack: ``kind`` says what it trains on and evaluates. Each model's
    measurement is its curve (mean over runs), with per-item scores kept so that the bootstrap
    intervals of every method resample the same items."""

    Params = RelearnParams
    kind: Relearning
    # re-emergence's saliency_by_layer / new_top_by_layer: [step][layer]
    declaration = AttackDeclaration(indexed=REEMERGENCE_LAYERS)

    def setup(self, original, target, params: RelearnParams, references=None) -> dict:
        suite = EvalSuite(original, {k: target.eval_sets().get(k, []) for k in self.kind.eval_sets + WATCH})
        missing = [k for k in self.kind.eval_sets if k not in suite.names]
        if missing:
            raise UserInputError(f"attack {self.name!r} needs the target's {', '.join(missing)} QA set")
        scorer = chosen_scorer(suite, target, params.metric, self.kind.eval_sets, params.max_new_tokens)
        setup = {"suite": suite, "data": _train_data(original, target, self.kind, params.max_length), "scorer": scorer}
        if params.reemergence and not is_ensemble(original.model):  # concept neurons are tracked on the first run
            probe = concept_probe(original, target, params.top_frac, params.seed)
            setup["probe"], setup["original_scores"] = probe, saliency(original.model, probe)
        return setup

    def measure(self, subject, setup: dict, params: RelearnParams, role: str) -> dict:
        label = role if role != "unlearned" else subject.name
        # an ensemble (SISA's) has no one set of neurons to track
        tracked = params.reemergence and "probe" in setup and not is_ensemble(subject.model)
        tracker = Tracker(setup["probe"], setup["original_scores"]) if tracked else None
        curve = _mean_over_seeds([relearn_curve(subject, setup["data"], setup["suite"], params, s,
                                                f"{label} ({self.name})", tracker if s == params.seed else None,
                                                setup["scorer"])
                                  for s in range(params.seed, params.seed + params.runs)])
        return {"steps": curve["steps"], "correct": {k: a.tolist() for k, a in curve["correct"].items()},
                **({"reemergence": tracker.summary()} if tracker is not None else
                   {"reemergence": {"not_applicable": "ensemble"}} if params.reemergence else {})}

    def _describe(self, curve: dict) -> dict:
        out = {"steps": curve["steps"], "acc": _pooled(curve, self.kind.eval_sets).mean(1).tolist()}
        for k in WATCH:
            if k in curve["correct"]:
                out[f"{k}_acc"] = np.asarray(curve["correct"][k]).mean(1).tolist()
        return out

    def baselines(self, references: dict, setup, params) -> dict:
        return {k: self._describe(_arrays(v)) for k, v in references.items()}

    def score(self, m: dict, original: dict, oracle: dict | None, setup, params: RelearnParams, name: str) -> dict:
        sets = self.kind.eval_sets
        c, orig = _arrays(m), _pooled(_arrays(original), sets)            # (C, N)
        orc = _pooled(_arrays(oracle), sets) if oracle is not None else None
        steps = original["steps"]
        original_acc = float(orig[0].mean())
        oracle_before = float(orc[0].mean()) if orc is not None else None
        pooled = _pooled(c, sets)
        acc = pooled.mean(1)
        rec = [recovery(float(a), float(acc[0]), original_acc) for a in acc]
        res = ([residual(float(a), float(b), original_acc, oracle_before) for a, b in zip(acc, orc.mean(1), strict=True)]
               if orc is not None else [None] * len(acc))
        ci = (bootstrap_intervals(pooled[-1], pooled[0], orig[0],
                                  orc[-1] if orc is not None else None, orc[0] if orc is not None else None,
                                  n=params.bootstrap, seed=params.seed)
              if params.bootstrap else {"recovery": None, "residual": None})
        out = {
            "recovery": rec[-1], "residual": res[-1],
            "recovery_ci": ci["recovery"] if rec[-1] is not None else None,
            "residual_ci": ci["residual"] if res[-1] is not None else None,
            "eval_sets": list(sets), "metric": params.metric,
            "acc_before": float(acc[0]), "acc_after": float(acc[-1]),
            "oracle_acc_after": float(orc[-1].mean()) if orc is not None else None,
            "steps_to_50pct": steps_to_fraction(steps, acc.tolist(), 0.5 * original_acc),
            "recovery_auc": curve_auc(steps, rec),
            "residual_auc": curve_auc(steps, res),
            "curve": {**self._describe(c), "recovery": rec, "residual": res},
        }
        if "not_applicable" in m.get("reemergence", {}):
            out["reemergence"] = m["reemergence"]
        elif "reemergence" in m:
            summaries = {name: m["reemergence"], **{k: r["reemergence"] for k, r in
                                                    (("original", original), ("oracle", oracle))
                                                    if r is not None and "reemergence" in r
                                                    and "not_applicable" not in r["reemergence"]}}
            out["reemergence"] = {"steps": steps, **{
                key: {k: v.get(key) for k, v in summaries.items()} for key in summaries[name]}}
        return out


def _arrays(measurement: dict) -> dict:
    return {"steps": measurement["steps"],
            "correct": {k: np.asarray(a, dtype=float) for k, a in measurement["correct"].items()}}


@register_attack
class RetrainOnT(Relearn):
    name = "rtt"
    summary = "fine-tune on the concept's train half, evaluate its held-out half"
    kind = RELEARNING["rtt"]


@register_attack
class ForgetData(Relearn):
    name = "forget_data"
    summary = "fine-tune on the forget texts, evaluate all forget QA"
    kind = RELEARNING["forget_data"]
    # relearning on the forget texts measures *speed*: at the last step it brings every model to
    # the same place, so its headline is the mean of the residual (recovery) curve over the run
    declaration = AttackDeclaration(headline="residual_auc", fallback="recovery_auc", indexed=REEMERGENCE_LAYERS)


@register_attack
class Unrelated(Relearn):
    name = "unrelated"
    summary = "fine-tune on retain text only, evaluate the held-out half"
    kind = RELEARNING["unrelated"]
