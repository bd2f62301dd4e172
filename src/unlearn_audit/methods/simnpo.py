"""SimNPO (Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization
for LLM Unlearning"): NPO without a reference model, with length normalisation and a margin.

    L = -(2/beta) * mean log sigmoid(-beta * (log pi_theta(y|x) / |y| + delta)) + lambda * NLL(retain)

|y| is the number of scored tokens. The margin ``delta`` sits inside beta, as in the authors'
code (OPTML-Group/Unlearn-Simple) and open-unlearning's ``trainer/unlearn/simnpo.py``
(``-logsigmoid(beta * (NLL/|y| - delta))``); the paper writes it as ``gamma = beta * delta``
outside: ``log sigmoid(-(beta/|y|) log pi - gamma)``. ``gamma`` is accepted for that notation
(it sets ``delta = gamma / beta``); give one of the two. Paper (TOFU): beta 2.5, gamma 0,
lambda ~ 0.1-0.25 at lr 1e-5 on 7B; our defaults come from the organism.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..errors import UserInputError
from ..metrics.likelihood import forward_logits, token_logprobs
from ..params import MAX_STEPS
from .base import FineTuneMethod, RetainParams, nll, register_method


class SimNPOParams(RetainParams):
    beta: float = Field(2.5, gt=0, description="Inverse temperature.")
    delta: float = Field(0.0, description="Reward margin inside beta (authors' code, open-unlearning).")
    gamma: float | None = Field(None, description="The paper's margin outside beta, gamma = beta * delta "
                                                  "(None: use delta).")
    # steps, lr, weight from the sweep on the default organism (BENCHMARKS.md)
    steps: int = Field(30, ge=0, le=MAX_STEPS)
    lr: float = Field(3e-4, gt=0)
    retain_weight: float = Field(5.0, ge=0)


def simnpo_loss(mean_logprob: torch.Tensor, beta: float, delta: float = 0.0) -> torch.Tensor:
    """``-(2/beta) * mean log sigmoid(-beta * (mean_logprob + delta))`` (mean_logprob = log pi / |y|;
    the paper's ``gamma`` is ``beta * delta``)."""
    return -(2.0 / beta) * torch.nn.functional.logsigmoid(-beta * (mean_logprob + delta)).mean()


def margin(params: SimNPOParams) -> float:
    """delta from ``delta`` or the paper's ``gamma`` (error when both are given)."""
    if params.gamma is None:
        return params.delta
    if params.delta:
        raise UserInputError("simnpo: give delta (the authors' code) or gamma = beta * delta (the paper), not both")
    return params.gamma / params.beta


@register_method("simnpo")
class SimNPO(FineTuneMethod):
    Params = SimNPOParams
    uses_retain = True

    def loss(self, model, batch, reference, params):
        forget = batch["forget"]
        logp, mask = token_logprobs(forward_logits(model, forget), forget["labels"])
        mean_logprob = logp.sum(1) / mask.sum(1).clamp(min=1)
        return simnpo_loss(mean_logprob, params.beta, margin(params)) + params.retain_weight * nll(model, batch["retain"])
