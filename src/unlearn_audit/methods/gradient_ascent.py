"""Gradient ascent (Jang et al. 2023, "Knowledge Unlearning for Mitigating Privacy Risks in
Language Models"): maximise the NLL of the forget data.

    L = -NLL(forget) = mean over forget tokens of log p_theta(y_t | y_<t)

Paper setting: lr 5e-5, batch 32, until the forget sequences' extraction likelihood falls
(GPT-Neo 125M-2.7B). Our defaults come from a sweep on the organism (see BENCHMARKS.md).
"""

from __future__ import annotations

from pydantic import Field

from ..params import MAX_STEPS
from .base import FineTuneMethod, FineTuneParams, nll, register_method


class GradientAscentParams(FineTuneParams):
    # defaults from the sweep on the default organism (BENCHMARKS.md); GA is never selective there
    steps: int = Field(10, ge=0, le=MAX_STEPS)
    lr: float = Field(3e-4, gt=0)


@register_method("gradient_ascent")
class GradientAscent(FineTuneMethod):
    Params = GradientAscentParams

    def loss(self, model, batch, reference, params):
        return -nll(model, batch["forget"])
