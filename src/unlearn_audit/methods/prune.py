"""Selective neuron pruning (Pochinkov & Schoots 2024, "Dissecting Language Models: Machine
Unlearning via Selective Pruning"; the method Lo, Cohen & Barez 2024 prune concepts with before
showing they are relearned), and random pruning as its control.

Each MLP neuron n (a coefficient: an input of the down projection) is scored by how much more
it is used on forget text than on retain text:

    I(D, n) = mean over tokens of D of |a_n|              (mean absolute activation)
    score(n) = I(D_forget, n) / (I(D_retain, n) + eps)

as the paper's code scores it (``nickypro/taker@1f5a5b4:src/taker/scoring.py``
``score_indices_by_abs``, ``pos_mass + |neg_mass|`` = mean |a|; ``eps`` is its
``PruningConfig.ff_eps``, 1e-3, which ``score_and_prune`` passes in place of the function's 1e-6)

and the top ``frac`` of neurons by score (across all layers, or the same fraction in every
layer) are removed by zeroing their value vectors (down-projection columns): a weight edit, so
it survives saving. With ``rounds > 1`` scoring and pruning repeat on the pruned model, ``frac``
of the remaining neurons each round (the paper prunes iteratively).

Paper settings: 2% of feed-forward neurons per step (their comparison script prunes 3% in one
step); the paper also prunes attention neurons, which this method does not. ``prune_random``
zeroes the same number of neurons chosen uniformly at random (seeded).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..data.encode import encode_texts
from ..params import MAX_STEPS
from ..subject.sites import Site, num_layers, token_means, value_vectors
from .base import Method, MethodParams, register_method


class PruneParams(MethodParams):
    # paper: 2% per step, repeated; on the organism the concept is spread out, and the sweep
    # (BENCHMARKS.md) picks 40% in one round as the best forget/unrelated trade-off
    frac: float = Field(0.4, gt=0, lt=1, description="Fraction of MLP neurons pruned per round.")
    scope: Literal["global", "layer"] = Field("global", description="Rank neurons across all layers, or within each layer.")
    rounds: int = Field(1, ge=1, le=MAX_STEPS, description="Score-and-prune rounds (each prunes frac of the remaining neurons).")
    batch_size: int = Field(32, ge=1, description="Texts per forward pass while scoring.")
    eps: float = Field(1e-3, gt=0, description="Added to the retain activation before dividing "
                       "(taker's ff_eps; 1e-5 before issue 15).")


def mean_abs_coefficients(model, data: dict, batch_size: int = 32) -> torch.Tensor:
    """``(n_layers, d_mlp)`` mean |coefficient| of every MLP neuron over the real tokens of ``data``."""
    sites = [Site("mlp_coefficients", layer) for layer in range(num_layers(model))]
    means = token_means(model, data, sites, torch.abs, batch_size)
    return torch.stack([means[s] for s in sites])


def top_fraction(scores: torch.Tensor, frac: float, scope: str, alive: torch.Tensor) -> torch.Tensor:
    """Boolean ``(n_layers, d_mlp)`` mask of the top ``frac`` of the ``alive`` neurons by score
    (over all layers, or per layer)."""
    scores = scores.masked_fill(~alive, float("-inf"))
    chosen = torch.zeros_like(alive)
    rows = [scores.flatten()] if scope == "global" else list(scores)
    for i, row in enumerate(rows):
        k = int(frac * int(torch.isfinite(row).sum()))
        if k == 0:
            continue
        idx = torch.topk(row, k).indices
        if scope == "global":
            chosen.view(-1)[idx] = True
        else:
            chosen[i, idx] = True
    return chosen


def prune(model, mask: torch.Tensor) -> None:
    """Zero the value vectors of the neurons in ``mask`` ``(n_layers, d_mlp)``, in place."""
    with torch.no_grad():
        for layer in range(mask.shape[0]):
            value_vectors(model, layer)[mask[layer].to(value_vectors(model, layer).device)] = 0


def _record(mask: torch.Tensor) -> dict:
    return {"pruned": int(mask.sum()), "pruned_per_layer": mask.sum(1).tolist()}


def _texts(target, which: str) -> list[str]:
    """Texts to score on; QA pairs rendered as lines when a set has no texts."""
    texts = target.forget_text if which == "forget" else target.retain_text
    if texts:
        return texts
    qa = target.all_forget_qa if which == "forget" else target.retain_qa
    return [f"{q.question} {q.answer}" for q in qa]


@register_method("prune_neurons")
class SelectivePruning(Method):
    kind = "transform"
    Params = PruneParams

    def apply(self, out, subject, target, params):
        tok = subject.tokenizer
        forget = encode_texts(tok, _texts(target, "forget"))
        retain = encode_texts(tok, _texts(target, "retain"))
        n_layers, width = num_layers(out.model), value_vectors(out.model, 0).shape[0]
        pruned = torch.zeros(n_layers, width, dtype=torch.bool)
        for _ in range(params.rounds):
            scores = (mean_abs_coefficients(out.model, forget, params.batch_size)
                      / (mean_abs_coefficients(out.model, retain, params.batch_size) + params.eps))
            chosen = top_fraction(scores, params.frac, params.scope, ~pruned)
            prune(out.model, chosen)
            pruned |= chosen
        return _record(pruned)


@register_method("prune_random")
class RandomPruning(Method):
    """The control for ``prune_neurons``: the same number of neurons, chosen at random."""

    kind = "transform"
    Params = PruneParams

    def apply(self, out, subject, target, params):
        n_layers, width = num_layers(subject.model), value_vectors(subject.model, 0).shape[0]
        gen = torch.Generator().manual_seed(params.seed)
        pruned = torch.zeros(n_layers, width, dtype=torch.bool)
        for _ in range(params.rounds):
            scores = torch.rand(n_layers, width, generator=gen)
            pruned |= top_fraction(scores, params.frac, params.scope, ~pruned)
        prune(out.model, pruned)
        return _record(pruned)
