"""Negative Preference Optimization (Zhang, Lin, Bai & Mei 2024, "Negative Preference
Optimization: From Catastrophic Collapse to Effective Unlearning"), and its retain-regularised
variants.

    L_NPO = -(2/beta) * mean_i log sigmoid(-beta * (log pi_theta(y_i|x_i) - log pi_ref(y_i|x_i)))

with sequence log-probs summed over the scored tokens (the answer for QA, every token for
text). As beta -> 0 it becomes gradient ascent (times a constant); large beta caps how far
a sequence is pushed below the reference. pi_ref is the original model; its log-probs of
every forget example are computed once before training.

- ``npo``: L_NPO alone (paper: beta 0.1, lr 1e-5, TOFU).
- ``npo_gd``: L_NPO + lambda * NLL(retain) (paper's NPO-RT).
- ``npo_kl``: L_NPO + lambda * KL(p_ref || p_theta) on the retain batch, over every position
  (``kl_positions=all``, open-unlearning's ``compute_kl_divergence``) or the labelled ones
  (``answer``); see :func:`~unlearn_audit.methods.base.retain_kl`.

Defaults from a sweep on the organism (see BENCHMARKS.md), not the paper's 7B settings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..metrics.likelihood import sequence_logprob
from ..params import MAX_STEPS
from .base import (
    FineTuneMethod,
    FineTuneParams,
    RetainParams,
    nll,
    npo_loss,
    reference_logits,
    register_method,
    retain_kl,
)


class NPOParams(FineTuneParams):
    # defaults from the sweep on the default organism (BENCHMARKS.md); paper: beta 0.1, lr 1e-5
    beta: float = Field(3.0, gt=0, description="Inverse temperature of the preference loss.")
    steps: int = Field(20, ge=0, le=MAX_STEPS)
    lr: float = Field(1e-4, gt=0)


class NPORetainParams(RetainParams):
    # defaults from the sweep on the default organism (BENCHMARKS.md); paper: beta 0.1, weight 1
    beta: float = Field(3.0, gt=0, description="Inverse temperature of the preference loss.")
    steps: int = Field(120, ge=0, le=MAX_STEPS)
    lr: float = Field(1e-4, gt=0)
    retain_weight: float = Field(5.0, ge=0)
    forget_on: Literal["qa", "text", "both"] = "both"


class NPOKLParams(NPORetainParams):
    # re-picked by the sweep for issue 15's all-positions KL (BENCHMARKS.md; forget_on both only)
    beta: float = Field(1.0, gt=0, description="Inverse temperature of the preference loss.")
    steps: int = Field(60, ge=0, le=MAX_STEPS)
    lr: float = Field(3e-4, gt=0)
    retain_weight: float = Field(20.0, ge=0)
    kl_positions: Literal["all", "answer"] = Field(
        "all", description="Retain KL over every position of the batch (all: open-unlearning) or over the "
                           "labelled positions only (answer).")


def _npo_term(model, batch, params):
    forget = batch["forget"]
    return npo_loss(sequence_logprob(model, forget), forget["ref_logprob"], params.beta)


@register_method("npo")
class NPO(FineTuneMethod):
    Params = NPOParams
    needs_reference_logprobs = True

    def loss(self, model, batch, reference, params):
        return _npo_term(model, batch, params)


@register_method("npo_gd")
class NPOGradientDifference(FineTuneMethod):
    Params = NPORetainParams
    needs_reference_logprobs = True
    uses_retain = True

    def loss(self, model, batch, reference, params):
        return _npo_term(model, batch, params) + params.retain_weight * nll(model, batch["retain"])


@register_method("npo_kl")
class NPOKL(FineTuneMethod):
    Params = NPOKLParams
    needs_reference_logprobs = True
    uses_retain = True

    def reference_outputs(self, reference, batch, params):
        return {"retain": {"ref_logits": reference_logits(reference, batch["retain"])}}

    def loss(self, model, batch, reference, params):
        return _npo_term(model, batch, params) + params.retain_weight * retain_kl(model, reference, batch["retain"],
                                                                                      params.kl_positions)
