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
    assert curve["layers"] == [0, 1]
    # the last layer's lens is the model's own next-token logits: rank and top-1 accuracy of
    # each answer's first token, computed here from one plain forward pass
    from unlearn_audit.data.encode import encode_qa

    enc = encode_qa(full.tokenizer, items, full.prompt_template, full.answer_eos)
    with torch.no_grad():
        logits = full.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float()
    rows = torch.arange(len(items))
    first = (enc["labels"] != -100).float().argmax(1)
    answer = enc["labels"][rows, first]
    at = logits[rows, first - 1]                                              # (N, V)
    rank = (at > at[rows, answer][:, None]).sum(-1).float()
    assert curve["rank"][-1] == pytest.approx(float(rank.mean()), rel=1e-5)
    assert curve["acc"][-1] == pytest.approx(float((rank == 0).float().mean()))
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


def test_logit_lens_results(results, micro_target):
    r, unlearned = results
    assert r["methods"]["none"]["attacks"]["logit_lens"]["recovery"] is None
    assert r["baselines"]["logit_lens"]["oracle"]["acc"][-1] < r["baselines"]["logit_lens"]["original"]["acc"][-1]
    ga = r["methods"]["ga"]["attacks"]["logit_lens"]
    direct = lens(unlearned["ga"], [q for q in micro_target.all_forget_qa if q.kind == "qa"])
    assert all(ga["curve"][k] == pytest.approx(direct[k]) for k in ("layers", "prob", "rank", "acc"))
    # the summaries recomputed by hand from the curves (formulas of the module docstring)
    acc, orig, orc = ga["curve"]["acc"], r["baselines"]["logit_lens"]["original"]["acc"], \
        r["baselines"]["logit_lens"]["oracle"]["acc"]
    assert ga["best_layer"] == max(range(len(acc)), key=lambda i: (acc[i], -i))
    assert ga["recovery"] == pytest.approx((max(acc) - acc[-1]) / (orig[-1] - acc[-1]))
    assert ga["residual"] == pytest.approx((max(acc) - max(orc)) / (orig[-1] - orc[-1]))


def test_ablation_undoes_a_steering_vector_and_leaves_no_hooks(results, micro):
    r, unlearned = results
    steered = r["methods"]["steered"]["attacks"]["ablation"]
    assert steered["acc_before"] < 0.8 and steered["recovery"] > 0.5, steered
    assert r["methods"]["none"]["attacks"]["ablation"]["recovery"] is None
    assert r["baselines"]["ablation"]["oracle"]["acc_ablated"] <= 0.2
    assert _no_hooks(micro[0].model) and _no_hooks(unlearned["ga"].model)
    assert len(unlearned["steered"].interventions) == 1  # its own steering hook stays
