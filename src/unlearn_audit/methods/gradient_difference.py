"""Gradient difference (Liu et al. 2022, "Continual Learning and Private Unlearning"; used as a
TOFU baseline by Maini et al. 2024 and Yao et al. 2024): ascend on forget, descend on retain.

    L = -NLL(forget) + lambda * NLL(retain)

``lambda`` is ``retain_weight`` (TOFU: 1). Defaults from a sweep on the organism.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..params import MAX_STEPS
from .base import FineTuneMethod, RetainParams, nll, register_method


class GradientDifferenceParams(RetainParams):
    # defaults from the sweep on the default organism (BENCHMARKS.md); TOFU: lr 1e-5, weight 1
    steps: int = Field(120, ge=0, le=MAX_STEPS)
    lr: float = Field(3e-4, gt=0)
    retain_weight: float = Field(20.0, ge=0)
    forget_on: Literal["qa", "text", "both"] = "both"


@register_method("gradient_difference")
class GradientDifference(FineTuneMethod):
    Params = GradientDifferenceParams
    uses_retain = True

    def loss(self, model, batch, reference, params):
        return -nll(model, batch["forget"]) + params.retain_weight * nll(model, batch["retain"])
