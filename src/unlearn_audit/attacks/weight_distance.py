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

Only the measured model is on the device: the original's weights (and, during the
interpolation, the measured model's own) wait off it (``subject/residency.py``) and are read one
tensor, or one slice of rows of a large tensor, at a time.

Recovery and residual are undefined here (nothing is attacked and a distance is no accuracy):
both are ``None``. The demo table shows ``relative_change`` for this attack instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from pydantic import Field, field_validator

from ..errors import UserInputError
from ..metrics.qa import EvalSuite
from ..results.schema import AttackDeclaration
from ..subject import residency
from ..subject.lora import plain_parameters
from ..subject.residency import Parked
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


# weights compared and interpolated at a time: a tensor larger than this (an embedding, a 7B
# model's MLP matrix) goes in slices of whole rows, so the extra memory on the device is a few
# such slices, not a copy of the model (16 MB in fp32)
CHUNK_ELEMENTS = 1 << 22


def _rows(shape: tuple[int, ...]) -> list[slice | None]:
    """Slices of the first dimension of a tensor of ``shape``, each at most ``CHUNK_ELEMENTS``
    (a row more when one row is larger); ``[None]`` (the whole tensor) when it fits in one."""
    numel = math.prod(shape)
    if not shape or numel <= CHUNK_ELEMENTS:
        return [None]
    step = max(1, CHUNK_ELEMENTS // (numel // shape[0]))
    return [slice(i, min(i + step, shape[0])) for i in range(0, shape[0], step)]


def _part(t: torch.Tensor, rows: slice | None) -> torch.Tensor:
    return t if rows is None else t[rows]


def check_same_shape(original: Parked, other, name: str) -> None:
    b = plain_parameters(other)
    if original.keys() != b.keys() or any(original.shapes[k] != tuple(b[k].shape) for k in b):
        raise UserInputError(f"weight_distance: {name} does not have the original's parameters "
                             "(names and shapes); weights are compared one by one")


def _group(name: str, prefix: str, n_layers: int) -> str:
    if name.startswith(prefix):
        index = name[len(prefix):].split(".", 1)[0]
        if index.isdigit() and int(index) < n_layers:
            return f"layer.{index}"
    return "other"


@torch.no_grad()
def distances(original: Parked, other, prefix: str, n_layers: int) -> dict:
    """Per group and in total: L2 norm of the weight change and its size relative to the
    original (its weights as parked by ``setup``; ``prefix`` and ``n_layers`` name its decoder
    layers' parameters)."""
    sq_diff: dict[str, float] = {}
    sq_norm: dict[str, float] = {}
    for name, q in plain_parameters(other).items():
        g = _group(name, prefix, n_layers)
        for rows in _rows(tuple(q.shape)):
            p = original.get(name, rows).float().to(q.device)
            sq_diff[g] = sq_diff.get(g, 0.0) + float((_part(q, rows).float() - p).pow(2).sum())
            sq_norm[g] = sq_norm.get(g, 0.0) + float(p.pow(2).sum())
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
def interpolation(original: Parked, subject, suite: EvalSuite, alphas: Sequence[float]) -> dict:
    """Forget/retain NLL and accuracy of ``subject`` with weights moved back along the line to
    the original's (as parked by ``setup``). The subject's own weights wait off the device
    meanwhile and are written back bit for bit at the end."""
    params = plain_parameters(subject.model)
    saved = residency.park({k: p.detach() for k, p in params.items()}, copy=True)
    curves: dict[str, dict[str, list[float]]] = {}
    try:
        for a in alphas:
            for k, p in params.items():
                for rows in _rows(tuple(p.shape)):
                    start = original.get(k, rows).to(p.device, p.dtype)
                    _part(p, rows).copy_(start + a * (saved.get(k, rows) - start))
            for set_name, scores in suite.run(subject).items():
                c = curves.setdefault(set_name, {"nll": [], "acc": []})
                c["nll"].append(scores.mean_nll)
                c["acc"].append(scores.accuracy)
    finally:
        for k, p in params.items():
            for rows in _rows(tuple(p.shape)):
                _part(p, rows).copy_(saved.get(k, rows))
    return {k: {**c, "barrier": barrier(alphas, c["nll"])} for k, c in curves.items()}


@register_attack
class WeightDistance(Attack):
    """The original has no distance from itself: only the oracle and the unlearned models are
    measured."""

    name = "weight_distance"
    needs_internals = True
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
        # the original's weights wait off the device (host memory, or a file), read a slice at
        # a time beside each model measured: only that model is on the device. A copy, since a
        # LoRA subject's base, merged into in place while it is measured, is the original's.
        weights = residency.park({k: p.detach() for k, p in plain_parameters(original.model).items()}, copy=True)
        return {"original": original, "weights": weights, "prefix": architecture(original.model).layers + ".",
                "n_layers": num_layers(original.model), "suite": EvalSuite(original, sets),
                "alphas": sorted(set(params.alphas))}

    def measure(self, subject, setup: dict, params, role: str) -> dict | None:
        if role == "original":
            return None
        weights = setup["weights"]
        check_same_shape(weights, subject.model, "the oracle" if role == "oracle" else subject.name)
        d = distances(weights, subject.model, setup["prefix"], setup["n_layers"])
        if role == "oracle":
            return d
        return {**d, "alphas": setup["alphas"],
                "interpolation": interpolation(weights, subject, setup["suite"], setup["alphas"])}

    def score(self, m: dict, original, oracle: dict | None, setup, params, name: str) -> dict:
        frac = m["l2"] / oracle["l2"] if oracle is not None and oracle["l2"] > 0 else None
        return {"recovery": None, "residual": None, **{k: m[k] for k in ("layers", "l2", "relative_change")},
                "fraction_of_oracle_distance": frac, "alphas": m["alphas"], "interpolation": m["interpolation"]}
