"""Direction ablation (Łucki et al. 2024, "An Adversarial Perspective on Machine Unlearning for
AI Safety"): unlearning that works by pushing activations along a direction can be undone by
projecting that direction out.

Per layer L, the direction is the difference of mean residual streams leaving L (over the real
tokens of the forget QA, question and answer) between the unlearned and the original model:

    r_L = mean h_L^unlearned(x) - mean h_L^original(x),      r̂_L = r_L / |r_L|

and the unlearned model is run with every layer's output projected off its direction,
``h_L <- h_L - (h_L . r̂_L) r̂_L``. The ``unrelated`` variant takes the means over unrelated QA
instead (a direction that is not about the concept). Reported: forget QA accuracy (both halves)
under ablation, recovery ``(ablated - unlearned) / (original - unlearned)``, and with an
oracle, residual ``(ablated_unlearned - ablated_oracle) / (original - oracle)`` where the oracle
is ablated along its own difference from the original. ``metric`` scores the forget QA with
another per-item score than exact match (:mod:`unlearn_audit.metrics.itemwise`).
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..data.encode import encode_qa
from ..metrics.itemwise import ItemScorer, chosen_scorer, set_means
from ..metrics.qa import EvalSuite
from ..metrics.recovery import recovery, residual
from ..params import ItemMetric, MaxNewTokens
from ..subject.sites import Site, hooks, num_layers, token_means
from .base import Attack, AttackParams, register_attack


class AblationParams(AttackParams):
    source: str = Field("forget", pattern="^(forget|unrelated)$",
                        description="QA whose mean activations define the direction: forget or unrelated.")
    metric: ItemMetric = "exact_match"
    max_new_tokens: MaxNewTokens = 32


def source_means(original, items) -> dict:
    """The encoded source QA and the original's mean residual per layer on it (computed once,
    in ``setup``: the original need not be on the device while another model is measured)."""
    data = encode_qa(original.tokenizer, items, original.prompt, original.answer_eos)
    sites = [Site("resid_post", layer) for layer in range(num_layers(original.model))]
    return {"data": data, "sites": sites, "means": token_means(original.model, data, sites)}


def directions(source: dict, subject) -> dict[Site, torch.Tensor]:
    """Unit direction per layer: mean residual of ``subject`` minus the original's
    (``source``: :func:`source_means`)."""
    sites, b = source["sites"], source["means"]
    a = token_means(subject.model, source["data"], sites)
    return {s: (a[s] - b[s]) / (a[s] - b[s]).norm().clamp(min=1e-12) for s in sites}


def ablated_accuracy(subject, suite: EvalSuite, dirs: dict[Site, torch.Tensor], scorer: ItemScorer | None = None) -> float:
    def project_out(r):
        def fn(h):
            r_ = r.to(h.device, h.dtype)
            return h - (h @ r_)[..., None] * r_
        return fn

    with hooks(subject.model, {s: project_out(r) for s, r in dirs.items()}):
        return set_means(subject, suite, scorer)["forget"]


def _source(target, params: AblationParams):
    return target.all_forget_qa if params.source == "forget" else (target.unrelated_qa or target.retain_qa)


@register_attack
class Ablation(Attack):
    """Each model is ablated along its own difference from the original; the original itself is
    only evaluated (its difference is zero)."""

    name = "ablation"
    needs_internals = True
    Params = AblationParams
    summary = "project out the unlearned-minus-original direction at every layer (Łucki et al. 2024)"

    def setup(self, original, target, params, references=None):
        suite = EvalSuite(original, {"forget": target.all_forget_qa})
        return {"suite": suite, "scorer": chosen_scorer(suite, target, params.metric, ("forget",), params.max_new_tokens),
                "source": source_means(original, _source(target, params))}

    def measure(self, subject, setup: dict, params: AblationParams, role: str) -> dict:
        acc = set_means(subject, setup["suite"], setup["scorer"])["forget"]
        if role == "original":
            return {"acc": acc}
        dirs = directions(setup["source"], subject)
        return {"acc": acc, "acc_ablated": ablated_accuracy(subject, setup["suite"], dirs, setup["scorer"])}

    def score(self, m: dict, original: dict, oracle: dict | None, setup, params, name: str) -> dict:
        before, after = m["acc"], m["acc_ablated"]
        res = residual(after, oracle["acc_ablated"], original["acc"], oracle["acc"]) if oracle is not None else None
        return {"recovery": recovery(after, before, original["acc"]), "residual": res,
                "acc_before": before, "acc_after": after, "source": params.source, "metric": params.metric}
