"""KRS patching (Hong et al. 2024) against hand-built cases and a straightforward loop."""

import pytest
import torch

from unlearn_audit.audits.patching import (
    PatchingParams,
    answer_mask,
    encode_teacher_forced,
    krs,
    krs_profile,
    per_row_mse,
    windows,
)
from unlearn_audit.metrics.generation import greedy_continuations
from unlearn_audit.subject.sites import Site, hooks, patched_weights, record, value_vectors


def _perturbed(subject, names, scale=0.05):
    out = subject.copy()
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in out.model.named_parameters():
            if any(k in n for k in names):
                p.add_(scale * torch.randn_like(p))
    return out


def _weights(s):
    return {n: p.detach().clone() for n, p in s.model.named_parameters()}


def test_windows_centred_and_truncated():
    assert windows(4, 1) == [[0], [1], [2], [3]]
    assert windows(4, 3) == [[0, 1], [0, 1, 2], [1, 2, 3], [2, 3]]
    assert windows(6, 5)[0] == [0, 1, 2] and windows(6, 5)[3] == [1, 2, 3, 4, 5]


def test_krs_by_hand():
    assert krs(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 4.0])) == pytest.approx((1 + 0.75) / 2)
    assert krs(torch.tensor([2.0]), torch.tensor([2.0])) == 0.0          # restoring nothing
    assert krs(torch.tensor([0.0, 5.0]), torch.tensor([2.0, 0.0])) == 1.0  # unchanged questions are skipped
    assert krs(torch.tensor([1.0]), torch.tensor([0.0])) is None
    logits, ref = torch.zeros(1, 3, 2), torch.tensor([[[1.0, 1.0], [2.0, 0.0], [9.0, 9.0]]])
    # positions 0 and 1 only: ((1 + 1) / 2 + (4 + 0) / 2) / 2 = 1.5
    assert float(per_row_mse(logits, ref, torch.tensor([[True, True, False]]))[0]) == 1.5


@pytest.mark.parametrize("changed, restored_by", [
    (["down_proj"], "value_vectors"),
    (["self_attn"], "attention"),
    (["gate_proj", "up_proj"], "coefficients"),
])
def test_restoring_exactly_what_changed_in_every_layer_gives_krs_1(micro, micro_target, changed, restored_by):
    full = micro[0]
    unlearned = _perturbed(full, changed)
    params = PatchingParams(window=2, content_control=False)  # one window covers both layers
    profile = krs_profile(full, unlearned, micro_target.forget_qa[:12], params)
    assert profile["changed_questions"] == 12
    whole = profile["windows"].index([0, 1])
    assert profile["krs"][restored_by][whole] == pytest.approx(1.0, abs=1e-5)
    others = [k for k in profile["krs"] if k != restored_by and restored_by not in k]
    for k in others:
        assert profile["krs"][k][whole] < 0.999, k


def test_batched_profile_equals_the_straightforward_loop(micro, micro_target):
    full = micro[0]
    unlearned = _perturbed(full, ["mlp", "self_attn"], 0.03)
    items = micro_target.forget_qa[:5]
    params = PatchingParams(window=1, batch_size=3, max_rows=4, content_control=False)
    profile = krs_profile(full, unlearned, items, params)
    before = _weights(unlearned)
    # reference: one question and one window at a time, vanilla re-run each time
    prompts, answers = greedy_continuations(full, items, params.max_new_tokens)
    per = {k: [] for k in profile["krs"]}
    for layer in range(2):
        scores = {k: [] for k in per}
        mse_u = []
        for p, a in zip(prompts, answers, strict=True):
            b = encode_teacher_forced([p], [a], full.tokenizer.pad_token_id)
            mask = answer_mask(b)

            def fwd(m, b=b):
                return m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits

            with torch.no_grad():
                ref = fwd(full.model)
                u = fwd(unlearned.model)
                mse_u.append(per_row_mse(u, ref, mask))
                for k, kinds in (("coefficients", ["mlp_coefficients"]), ("attention", ["attn_out"]),
                                 ("coefficients+attention", ["mlp_coefficients", "attn_out"])):
                    sites = [Site(kind, layer) for kind in kinds]
                    cache = record(full.model, sites, lambda: fwd(full.model))
                    with hooks(unlearned.model, {s: (lambda x, s=s, cache=cache: cache[s]) for s in sites}):
                        scores[k].append(per_row_mse(fwd(unlearned.model), ref, mask))
                with patched_weights(unlearned.model, {layer: value_vectors(full.model, layer)}):
                    scores["value_vectors"].append(per_row_mse(fwd(unlearned.model), ref, mask))
        for k in per:
            per[k].append(krs(torch.cat(scores[k]), torch.cat(mse_u)))
    for k in per:
        assert profile["krs"][k] == pytest.approx(per[k], abs=1e-5), k
    after = _weights(unlearned)
    assert all(torch.equal(before[n], after[n]) for n in before), "patching left a weight changed"


def test_patching_audit_on_a_real_unlearned_model(micro, micro_target):
    from unlearn_audit.api import audit, unlearn

    ga = unlearn(micro[0], micro_target, "gradient_ascent", steps=30)
    none = unlearn(micro[0], micro_target, "none")
    r = audit(micro[0], {"ga": ga, "none": none}, micro_target, attacks=["patching"],
              attack_params={"patching": {"max_questions": 16}})
    p = r["methods"]["ga"]["attacks"]["patching"]
    assert set(p["krs"]) == {"coefficients", "value_vectors", "attention", "coefficients+attention"}
    assert p["layers"] == [0, 1] and p["window"] == 1 and p["residual"] is None
    assert p["recovery"] == max(v for s in p["krs"].values() for v in s)
    # restoring the coefficients of another entity's question brings the vanilla logits back
    # less than restoring the question's own coefficients
    assert p["content_control"]["questions"] > 0
    assert max(p["content_control"]["coefficients"]) < max(p["krs"]["coefficients"])
    assert p["control_unrelated"]["questions"] == 16
    n = r["methods"]["none"]["attacks"]["patching"]
    assert n["recovery"] is None and n["changed_questions"] == 0
