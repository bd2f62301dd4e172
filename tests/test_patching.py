"""KRS patching (Hong et al. 2024) against hand-built cases and a straightforward loop."""

import pytest
import torch

from unlearn_audit.attacks.patching import (
    PatchingParams,
    krs,
    krs_profile,
    krs_profile_loop,
    per_row_mse,
    windows,
)


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
    reference = krs_profile_loop(full, unlearned, items, params)  # one question, one window at a time
    for k in reference:
        assert profile["krs"][k] == pytest.approx(reference[k], abs=1e-5), k
    after = _weights(unlearned)
    assert all(torch.equal(before[n], after[n]) for n in before), "patching left a weight changed"


def test_patching_audit_on_a_real_unlearned_model(micro, micro_target):
    from unlearn_audit.api import audit, unlearn

    ga = unlearn(micro[0], micro_target, "gradient_ascent", steps=30, lr=1e-4)
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
