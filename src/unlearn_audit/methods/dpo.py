"""DPO with "I don't know" as the preferred answer (Rafailov et al. 2023, "Direct Preference
Optimization"; as an unlearning baseline: TOFU's IdkDPO, Maini et al. 2024).

For each forget question x, the true answer y_l is dispreferred and a refusal y_w ("I don't
know.") is preferred:

    L = -mean log sigmoid(beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])
        + lambda * NLL(retain)

Sequence log-probs are summed over answer tokens; pi_ref (the original) log-probs are
computed once before training. TOFU uses beta 0.1 with a retain NLL term (lambda 1). QA only:
a text has no answer to replace.
"""

from __future__ import annotations

import random

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
    # steps, lr, weight from the sweep on the default organism (BENCHMARKS.md); none forgets
    # to <= 0.2 there without breaking unrelated QA
    steps: int = Field(120, ge=0, le=MAX_STEPS)
    lr: float = Field(1e-3, gt=0)
    retain_weight: float = Field(5.0, ge=0)
    preferred: list[str] = Field(list(IDK_ANSWERS), min_length=1,
                                 description="Preferred answers; each forget question gets one (seeded).")


def preference_data(subject, target, params) -> dict:
    """Forget QA with the true answer as the rejected side and a refusal as ``chosen``."""
    rng = random.Random(params.seed)
    items = target.all_forget_qa
    chosen_items = [QA(q.question, rng.choice(params.preferred), q.kind, q.entity, q.attribute) for q in items]
    tok, tpl, eos = subject.tokenizer, subject.prompt_template, subject.answer_eos
    rejected = encode_qa(tok, items, tpl, eos)
    chosen = encode_qa(tok, chosen_items, tpl, eos)
    rejected["ref_logprob"] = reference_logprobs(subject.model, rejected)
    chosen["ref_logprob"] = reference_logprobs(subject.model, chosen)
    return {**rejected, "chosen": chosen}


def dpo_loss(chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float) -> torch.Tensor:
    """``-mean log sigmoid(beta * (chosen_logratio - rejected_logratio))``."""
    return -torch.nn.functional.logsigmoid(beta * (chosen_logratio - rejected_logratio)).mean()


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
        return dpo_loss(win, lose, params.beta) + params.retain_weight * nll(model, batch["retain"])
