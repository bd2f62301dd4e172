"""SimNPO (Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization
for LLM Unlearning"): NPO without a reference model, with length normalisation and a margin.

    L = -(2/beta) * mean log sigmoid(-(beta/|y|) * log pi_theta(y|x) - gamma) + lambda * NLL(retain)

|y| is the number of scored tokens. Paper (TOFU): beta 2.5, gamma 0, lambda ~ 0.1-0.25 at
lr 1e-5 on 7B; our defaults come from the organism.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..metrics.likelihood import forward_logits, token_logprobs
from ..params import MAX_STEPS
from .base import FineTuneMethod, RetainParams, nll, register_method


class SimNPOParams(RetainParams):
    beta: float = Field(2.5, gt=0, description="Inverse temperature.")
    gamma: float = Field(0.0, description="Reward margin.")
    # steps, lr, weight from the sweep on the default organism (BENCHMARKS.md)
    steps: int = Field(30, ge=0, le=MAX_STEPS)
    lr: float = Field(3e-4, gt=0)
    retain_weight: float = Field(5.0, ge=0)


def simnpo_loss(mean_logprob: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """``-(2/beta) * mean log sigmoid(-beta * mean_logprob - gamma)`` (mean_logprob = log pi / |y|)."""
    return -(2.0 / beta) * torch.nn.functional.logsigmoid(-beta * mean_logprob - gamma).mean()


@register_method("simnpo")
class SimNPO(FineTuneMethod):
    Params = SimNPOParams
    uses_retain = True

    def loss(self, model, batch, reference, params):
        forget = batch["forget"]
        logp, mask = token_logprobs(forward_logits(model, forget), forget["labels"])
        mean_logprob = logp.sum(1) / mask.sum(1).clamp(min=1)
        return simnpo_loss(mean_logprob, params.beta, params.gamma) + params.retain_weight * nll(model, batch["retain"])
