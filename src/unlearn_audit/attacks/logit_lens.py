"""Logit lens: is the answer readable in the residual stream before the last layer?

At every layer L, the residual stream leaving L at the last prompt token is projected through
the final norm and the unembedding (nostalgebraist 2020, "interpreting GPT: the logit lens");
for each forget question we read the probability and the rank of the reference answer's first
token. A method that hides the answer in its last layers still shows it at intermediate ones
(Patil et al. 2024 extract "deleted" answers this way).

Summaries, with acc(L) = fraction of questions whose answer's first token is the top-1 token at
layer L and acc_final its value at the last layer:

    recovery = (max_L acc_unlearned(L) - acc_unlearned_final) / (acc_original_final - acc_unlearned_final)
    residual = (max_L acc_unlearned(L) - max_L acc_oracle(L)) / (acc_original_final - acc_oracle_final)

i.e. how much of the first-token knowledge unlearning removed is readable at some layer, and how
much more than in a model that never knew the concept.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..data.encode import encode_qa
from ..errors import UserInputError
from ..metrics.likelihood import eval_mode, forward
from ..metrics.recovery import recovery, residual
from ..subject.sites import Site, num_layers, record, unembed
from .base import Attack, AttackParams, register_attack


class LogitLensParams(AttackParams):
    batch_size: int = Field(64, ge=1)


@torch.no_grad()
def lens(subject, items, batch_size: int = 64) -> dict:
    """Per layer: mean probability, mean rank (0 = top) and top-1 accuracy of each item's
    first answer token at the last prompt position."""
    model, tok = subject.model, subject.tokenizer
    data = encode_qa(tok, items, subject.prompt, subject.answer_eos)
    labels = data["labels"]
    first = (labels != -100).float().argmax(1)                              # (N,) first answer position
    position, answer = first - 1, labels[torch.arange(len(items)), first]   # predicting position, token
    n_layers = num_layers(model)
    sites = [Site("resid_post", layer) for layer in range(n_layers)]
    device = next(model.parameters()).device
    prob, rank = torch.zeros(n_layers, len(items)), torch.zeros(n_layers, len(items))
    with eval_mode(model):
        for i in range(0, len(items), batch_size):
            sl = slice(i, i + batch_size)
            ids, mask = data["input_ids"][sl].to(device), data["attention_mask"][sl].to(device)
            acts = record(model, sites, lambda ids=ids, mask=mask: forward(model, ids, mask))
            rows = torch.arange(ids.shape[0])
            for layer, site in enumerate(sites):
                logits = unembed(model, acts[site][rows, position[sl].to(device)]).float()   # (B, V)
                target = answer[sl].to(device)
                p = torch.softmax(logits, -1)
                prob[layer, sl] = p[rows, target].cpu()
                rank[layer, sl] = (logits > logits[rows, target][:, None]).sum(-1).float().cpu()
    return {"layers": list(range(n_layers)), "prob": prob.mean(1).tolist(), "rank": rank.mean(1).tolist(),
            "acc": (rank == 0).float().mean(1).tolist()}


def _items(target):
    items = [q for q in target.all_forget_qa if q.kind == "qa"]
    if not items:
        raise UserInputError("logit_lens needs forget QA (question/answer lines)")
    return items


@register_attack
class LogitLens(Attack):
    name = "logit_lens"
    needs_internals = True
    Params = LogitLensParams
    summary = "read the answer's first token from every layer's residual stream"

    def setup(self, original, target, params, references=None):
        return _items(target)

    def measure(self, subject, items, params: LogitLensParams, role: str) -> dict:
        return lens(subject, items, params.batch_size)

    def score(self, curve: dict, original: dict, oracle: dict | None, items, params, name: str) -> dict:
        acc_orig = original["acc"][-1]
        peak = max(curve["acc"])
        res = residual(peak, max(oracle["acc"]), acc_orig, oracle["acc"][-1]) if oracle is not None else None
        return {"recovery": recovery(peak, curve["acc"][-1], acc_orig), "residual": res,
                "best_layer": int(curve["acc"].index(peak)), "curve": curve}
