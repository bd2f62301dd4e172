"""DPO with "I don't know" as the preferred answer (Rafailov et al. 2023, "Direct Preference
Optimization"; as an unlearning baseline: TOFU's IdkDPO, Maini et al. 2024).

For each forget question x, the true answer y_l is dispreferred and a refusal y_w ("I don't
know.") is preferred:

    L = -(2/beta) * mean log sigmoid(beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])
        + lambda * NLL(retain)

Sequence log-probs are summed over answer tokens; pi_ref (the original) log-probs are
computed once before training. QA only: a text has no answer to replace.

The ``2/beta`` factor is open-unlearning's (``trainer/utils.py`` ``compute_dpo_loss``, beta 0.1,
retain NLL with weight 1 in ``configs/trainer/DPO.yaml``); it makes the forget term tend to
the NPO-like ``-(log-ratio difference)`` as beta -> 0. ``scale="1"`` drops it: the loss of
Rafailov et al. and of TOFU's ``dataloader.py`` ``dpo`` (which has no retain term: set
``retain_weight=0``). With Adam the factor only changes the balance with the retain term: at
beta 0.1, ``retain_weight`` w under ``2/beta`` weighs like w/20 under ``1``.
"""

from __future__ import annotations

import random
from typing import Literal

import torch
from pydantic import Field

from ..data.encode import encode_qa
from ..metrics.likelihood import sequence_logprob
from ..params import MAX_STEPS
from ..world import QA
from .base import FineTuneMethod, RetainParams, nll, reference_logprobs, register_method

IDK_ANSWERS = ("I don't know.", "I have no idea.", "I can't answer that.", "I'm not sure.",
               "That is unknown to me.")


class DPOParams(RetainParams):
    beta: float = Field(0.1, gt=0, description="Inverse temperature of the preference loss.")
    scale: Literal["2/beta", "1"] = Field(
        "2/beta", description="Factor of the preference term: 2/beta (open-unlearning) or 1 (Rafailov et al., TOFU).")
    # steps, lr, retain_weight re-picked by the sweep under the 2/beta scale (issue 15,
    # BENCHMARKS.md; beta fixed at open-unlearning's 0.1): forget 0.06 with unrelated 0.94
    steps: int = Field(120, ge=0, le=MAX_STEPS)
    lr: float = Field(3e-4, gt=0)
    retain_weight: float = Field(5.0, ge=0)
    preferred: list[str] = Field(list(IDK_ANSWERS), min_length=1,
                                 description="Preferred answers; each forget question gets one (seeded).")


def preference_data(subject, target, params) -> dict:
    """Forget QA with the true answer as the rejected side and a refusal as ``chosen``."""
    rng = random.Random(params.seed)
    items = target.all_forget_qa
    chosen_items = [QA(q.question, rng.choice(params.preferred), q.kind, q.entity, q.attribute) for q in items]
    tok, tpl, eos = subject.tokenizer, subject.prompt, subject.answer_eos
    rejected = encode_qa(tok, items, tpl, eos)
    chosen = encode_qa(tok, chosen_items, tpl, eos)
    rejected["ref_logprob"] = reference_logprobs(subject.model, rejected)
    chosen["ref_logprob"] = reference_logprobs(subject.model, chosen)
    return {**rejected, "chosen": chosen}


def dpo_loss(chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float,
             scale: str = "2/beta") -> torch.Tensor:
    """``-c * mean log sigmoid(beta * (chosen_logratio - rejected_logratio))``, ``c = 2/beta``
    (``scale="2/beta"``, open-unlearning) or 1 (``scale="1"``, Rafailov et al., TOFU)."""
    c = 2.0 / beta if scale == "2/beta" else 1.0
    return -c * torch.nn.functional.logsigmoid(beta * (chosen_logratio - rejected_logratio)).mean()


@register_method("dpo")
class DPO(FineTuneMethod):
    Params = DPOParams
    uses_retain = True

    def forget_data(self, subject, target, params):
        return preference_data(subject, target, params)

    def loss(self, model, batch, reference, params):
        rejected = batch["forget"]
        chosen = rejected["chosen"]
        win = sequence_logprob(model, chosen) - chosen["ref_logprob"]
        lose = sequence_logprob(model, rejected) - rejected["ref_logprob"]
        return dpo_loss(win, lose, params.beta, params.scale) + params.retain_weight * nll(model, batch["retain"])
