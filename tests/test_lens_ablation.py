"""Logit lens and direction ablation audits."""

import pytest
import torch

from unlearn_audit.api import audit, unlearn
from unlearn_audit.attacks.logit_lens import lens
from unlearn_audit.metrics import EvalSuite


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.fixture(scope="module")
def results(micro, micro_target):
    full, oracle = micro
    unlearned = {"none": unlearn(full, micro_target, "none"),
                 "steered": unlearn(full, micro_target, "control_vector", alpha=8.0),
                 "ga": unlearn(full, micro_target, "gradient_ascent", steps=30, lr=1e-4)}
    return audit(full, unlearned, micro_target, attacks=["logit_lens", "ablation"], oracle=oracle), unlearned


def test_logit_lens_last_layer_matches_first_token_accuracy(micro, micro_target):
    full = micro[0]
    items = micro_target.all_forget_qa
    curve = lens(full, items)
    assert len(curve["acc"]) == 2 and curve["rank"][-1] >= 0
    # a question is answered exactly only if its first answer token is the top-1 token
    exact = EvalSuite(full, {"f": items}).accuracies(full)["f"]
    assert curve["acc"][-1] >= exact >= 0.9
    with torch.no_grad():
        from unlearn_audit.data.encode import encode_qa

        enc = encode_qa(full.tokenizer, items[:1], full.prompt_template, True)
        logits = full.model(input_ids=enc["input_ids"]).logits[0]
        first = int((enc["labels"][0] != -100).nonzero()[0])
        p = torch.softmax(logits[first - 1], -1)[enc["labels"][0, first]]
    assert lens(full, items[:1])["prob"][-1] == pytest.approx(float(p), rel=1e-5)


def test_logit_lens_results(results):
    r, _ = results
    assert r["methods"]["none"]["attacks"]["logit_lens"]["recovery"] is None
    assert r["baselines"]["logit_lens"]["oracle"]["acc"][-1] < r["baselines"]["logit_lens"]["original"]["acc"][-1]
    ga = r["methods"]["ga"]["attacks"]["logit_lens"]
    assert 0 <= ga["best_layer"] < 2 and ga["residual"] is not None


def test_ablation_undoes_a_steering_vector_and_leaves_no_hooks(results, micro):
    r, unlearned = results
    steered = r["methods"]["steered"]["attacks"]["ablation"]
    assert steered["acc_before"] < 0.8 and steered["recovery"] > 0.5, steered
    assert r["methods"]["none"]["attacks"]["ablation"]["recovery"] is None
    assert r["baselines"]["ablation"]["oracle"]["acc_ablated"] <= 0.2
    assert _no_hooks(micro[0].model) and _no_hooks(unlearned["ga"].model)
    assert len(unlearned["steered"].interventions) == 1  # its own steering hook stays
