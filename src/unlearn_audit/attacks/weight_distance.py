"""Weight distance and linear mode connectivity: how far did unlearning move the model?

Cheap indicators, not an attack. Fine-tuning unlearning often moves the weights very little
(Hong et al. 2024; Zhang et al. 2025 tie quantization's restoring power to it), and a small
move that switches off a behaviour is a sign that the knowledge is hidden rather than removed.

- Per decoder layer (and ``other``: embeddings, final norm, output head), with every parameter
  of the group flattened into one vector: ``l2 = ||theta_u - theta_o||_2`` and
  ``relative = l2 / ||theta_o||_2`` (``theta_o`` original, ``theta_u`` unlearned); the same
  over all parameters as ``relative_change``. The oracle's distance from the original (a model
  trained from the same initialisation without the concept) is the scale of a real removal:
  ``fraction_of_oracle_distance = ||theta_u - theta_o|| / ||theta_oracle - theta_o||``.
- Linear mode connectivity (Frankle et al. 2020): forget and retain (a seeded sample as large as
  the forget QA) answer NLL and accuracy of ``theta(alpha) = theta_o + alpha (theta_u -
  theta_o)`` at ``alphas`` (default 0, 0.25, 0.5, 0.75, 1), and the loss barrier
  ``max_alpha [L(alpha) - ((1 - alpha) L(0) + alpha L(1))]`` (0 when the loss is linear or
  convex along the line). The interpolation is written into the unlearned model in place and
  its weights are restored bit for bit in ``finally``; it runs with the unlearned subject's
  prompt template and inference interventions.

Recovery and residual are undefined here (nothing is attacked and a distance is no accuracy):
both are ``None``. The demo table shows ``relative_change`` for this attack instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field, field_validator

from ..errors import UserInputError
from ..metrics.qa import EvalSuite
from ..results.schema import AttackDeclaration
from ..subject.sites import architecture, num_layers
from .base import Attack, AttackParams, register_attack, sample_items


class WeightDistanceParams(AttackParams):
    alphas: list[float] = Field([0.0, 0.25, 0.5, 0.75, 1.0],
                                description="Interpolation points between the original (0) and the unlearned model (1).")

    @field_validator("alphas")
    @classmethod
    def _two_points(cls, alphas: list[float]) -> list[float]:
        if len(set(alphas)) < 2:
            raise ValueError("give at least two different alphas, e.g. [0, 0.5, 1]")
        return alphas


def _params(model) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())  # tied weights appear once


def check_same_shape(original, other, name: str) -> None:
    a, b = _params(original), _params(other)
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise UserInputError(f"weight_distance: {name} does not have the original's parameters "
                             "(names and shapes); weights are compared one by one")


def _group(name: str, prefix: str, n_layers: int) -> str:
    if name.startswith(prefix):
        index = name[len(prefix):].split(".", 1)[0]
        if index.isdigit() and int(index) < n_layers:
            return f"layer.{index}"
    return "other"


@torch.no_grad()
def distances(original, other) -> dict:
    """Per group and in total: L2 norm of the weight change and its size relative to the original."""
    prefix = architecture(original).layers + "."
    n_layers = num_layers(original)
    sq_diff: dict[str, float] = {}
    sq_norm: dict[str, float] = {}
    b = _params(other)
    for name, p in _params(original).items():
        g = _group(name, prefix, n_layers)
        sq_diff[g] = sq_diff.get(g, 0.0) + float((b[name].float() - p.float().to(b[name].device)).pow(2).sum())
        sq_norm[g] = sq_norm.get(g, 0.0) + float(p.float().pow(2).sum())
    groups = sorted(sq_diff, key=lambda g: (g == "other", int(g.split(".")[1]) if g != "other" else 0))
    out = {g: {"l2": sq_diff[g] ** 0.5, "relative": (sq_diff[g] / max(sq_norm[g], 1e-30)) ** 0.5} for g in groups}
    total_diff, total_norm = sum(sq_diff.values()), sum(sq_norm.values())
    return {"layers": out, "l2": total_diff ** 0.5, "relative_change": (total_diff / max(total_norm, 1e-30)) ** 0.5}


def barrier(alphas: Sequence[float], losses: Sequence[float]) -> float:
    """``max_alpha [L(alpha) - ((1 - alpha) L(alpha_0) + alpha L(alpha_1))]`` along the path,
    with the straight line drawn between the first and the last point."""
    a0, a1, l0, l1 = alphas[0], alphas[-1], losses[0], losses[-1]
    span = (a1 - a0) or 1.0
    return max(loss - (l0 + (a - a0) / span * (l1 - l0)) for a, loss in zip(alphas, losses, strict=True))


@torch.no_grad()
def interpolation(original, subject, suite: EvalSuite, alphas: Sequence[float]) -> dict:
    """Forget/retain NLL and accuracy of ``subject`` with weights moved back along the line."""
    start = _params(original.model)
    params = _params(subject.model)
    saved = {k: p.detach().clone() for k, p in params.items()}
    curves: dict[str, dict[str, list[float]]] = {}
    try:
        for a in alphas:
            for k, p in params.items():
                p.copy_(start[k].to(p.device, p.dtype) + a * (saved[k] - start[k].to(p.device, p.dtype)))
            for set_name, scores in suite.run(subject).items():
                c = curves.setdefault(set_name, {"nll": [], "acc": []})
                c["nll"].append(scores.mean_nll)
                c["acc"].append(scores.accuracy)
    finally:
        for k, p in params.items():
            p.copy_(saved[k])
    return {k: {**c, "barrier": barrier(alphas, c["nll"])} for k, c in curves.items()}


@register_attack
class WeightDistance(Attack):
    """The original has no distance from itself: only the oracle and the unlearned models are
    measured."""

    name = "weight_distance"
    uses_original = True
    Params = WeightDistanceParams
    merged_weights = True  # weights one by one: a LoRA subject's merged weights
    summary = "per-layer weight change vs the original and the loss along the straight line between them"
    # its "layers" is a mapping of parameter groups, not an axis; the loss is a series over alpha
    declaration = AttackDeclaration(headline="relative_change", fallback=None, label="rel. Δw",
                                    axes={"alphas": "alpha"})

    def setup(self, original, target, params, references=None):
        forget = target.all_forget_qa
        sets = {k: v for k, v in (("forget", forget), ("retain", sample_items(target.retain_qa, len(forget), params.seed)))
                if v}
        return {"original": original, "suite": EvalSuite(original, sets), "alphas": sorted(set(params.alphas))}

    def measure(self, subject, setup: dict, params, role: str) -> dict | None:
        original = setup["original"]
        if role == "original":
            return None
        check_same_shape(original.model, subject.model, "the oracle" if role == "oracle" else subject.name)
        d = distances(original.model, subject.model)
        if role == "oracle":
            return d
        return {**d, "alphas": setup["alphas"],
                "interpolation": interpolation(original, subject, setup["suite"], setup["alphas"])}

    def score(self, m: dict, original, oracle: dict | None, setup, params, name: str) -> dict:
        frac = m["l2"] / oracle["l2"] if oracle is not None and oracle["l2"] > 0 else None
        return {"recovery": None, "residual": None, **{k: m[k] for k in ("layers", "l2", "relative_change")},
                "fraction_of_oracle_distance": frac, "alphas": m["alphas"], "interpolation": m["interpolation"]}
