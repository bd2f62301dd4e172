"""Pruning, control vectors, RMU and MEMIT: weight edits and inference-time steering."""

import pytest
import torch

from unlearn_audit.api import unlearn
from unlearn_audit.data.encode import encode_texts
from unlearn_audit.errors import UserInputError
from unlearn_audit.methods.prune import mean_abs_coefficients, top_fraction
from unlearn_audit.methods.rmu import rmu_loss
from unlearn_audit.metrics import EvalSuite
from unlearn_audit.organisms import load_subject
from unlearn_audit.subject.sites import Site, token_means, value_vectors


def _logits(subject, texts):
    batch = encode_texts(subject.tokenizer, texts)
    with torch.no_grad():
        return subject.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_top_fraction_global_and_per_layer():
    scores = torch.tensor([[5.0, 1.0, 3.0, 0.0], [4.0, 6.0, 2.0, 7.0]])
    alive = torch.ones(2, 4, dtype=torch.bool)
    assert top_fraction(scores, 0.25, "global", alive).nonzero().tolist() == [[1, 1], [1, 3]]
    assert top_fraction(scores, 0.5, "layer", alive).nonzero().tolist() == [[0, 0], [0, 2], [1, 1], [1, 3]]
    alive[1, 3] = False  # already pruned: never chosen again; 25% of the 7 left is 1 neuron
    assert top_fraction(scores, 0.25, "global", alive).nonzero().tolist() == [[1, 1]]


def test_pruning_zeroes_exactly_the_chosen_neurons(micro, micro_target):
    full = micro[0]
    u = unlearn(full, micro_target, "prune_neurons", frac=0.05)
    forget = encode_texts(full.tokenizer, micro_target.forget_text)
    retain = encode_texts(full.tokenizer, micro_target.retain_text)
    scores = mean_abs_coefficients(full.model, forget) / (mean_abs_coefficients(full.model, retain) + 1e-5)
    expected = top_fraction(scores, 0.05, "global", torch.ones_like(scores, dtype=torch.bool))
    assert u.info["method"]["pruned"] == int(expected.sum()) > 0
    for layer in range(expected.shape[0]):
        after, before = value_vectors(u.model, layer), value_vectors(full.model, layer)
        zeroed = (after == 0).all(1)
        assert torch.equal(zeroed, expected[layer]), layer
        assert torch.equal(after[~zeroed], before[~zeroed])  # nothing else touched
    # the first layer's MLP output (its inputs are unchanged by pruning) loses more on forget
    # text than on retain text
    site = Site("mlp_out", 0)

    def drop(data):
        norm = lambda x: x.norm(dim=-1, keepdim=True)  # noqa: E731
        before = token_means(full.model, data, [site], norm)[site]
        return float(1 - token_means(u.model, data, [site], norm)[site] / before)

    assert drop(forget) > drop(retain) > 0


def test_random_pruning_prunes_as_many(micro, micro_target):
    sel = unlearn(micro[0], micro_target, "prune_neurons", frac=0.05)
    rnd = unlearn(micro[0], micro_target, "prune_random", frac=0.05)
    assert rnd.info["method"]["pruned"] == sel.info["method"]["pruned"]
    rnd2 = unlearn(micro[0], micro_target, "prune_random", frac=0.05, seed=1)
    assert not all(torch.equal(value_vectors(rnd.model, i), value_vectors(rnd2.model, i)) for i in range(2))


def test_control_vector_bake_matches_hook_and_survives_save(micro, micro_target, tmp_path):
    texts = micro_target.forget_text[:4] + micro_target.retain_text[:4]
    hooked = unlearn(micro[0], micro_target, "control_vector", alpha=4.0)
    baked = unlearn(micro[0], micro_target, "control_vector", alpha=4.0, bake=True)
    assert len(hooked.interventions) == 1 and not baked.interventions and _no_hooks(baked.model)
    clean, steered = _logits(micro[0], texts), _logits(hooked, texts)
    assert not torch.allclose(clean, steered)
    torch.testing.assert_close(_logits(baked, texts), steered, rtol=1e-4, atol=1e-4)
    assert _no_hooks(micro[0].model), "the original model carries no hook"
    baked.save(tmp_path / "baked")
    hooked.save(tmp_path / "hooked")
    for path in ("baked", "hooked"):
        torch.testing.assert_close(_logits(load_subject(tmp_path / path, device="cpu"), texts), steered,
                                   rtol=1e-4, atol=1e-4)
    hooked._detach()
    assert _no_hooks(hooked.model)


def test_control_vector_bake_refused_without_a_bias(tiny_model_dirs, micro_target):
    qwen = load_subject(tiny_model_dirs["qwen2"], device="cpu")
    with pytest.raises(UserInputError, match="bake=true needs an MLP output bias"):
        unlearn(qwen, micro_target, "control_vector", bake=True)


def test_rmu_loss_by_hand():
    h_f = torch.tensor([[[1.0, 2.0], [9.0, 9.0]]])          # (1, 2, 2); second token is padding
    target = torch.tensor([0.0, 1.0])
    h_r = torch.tensor([[[1.0, 1.0]]])
    h_frozen = torch.tensor([[[0.0, 3.0]]])
    got = rmu_loss(h_f, target, h_r, h_frozen, torch.tensor([[True, False]]), torch.tensor([[True]]), alpha=10.0)
    # forget: ((1-0)^2 + (2-1)^2) / 2 = 1; retain: ((1-0)^2 + (1-3)^2) / 2 = 2.5
    assert float(got) == pytest.approx(1.0 + 10.0 * 2.5)


def test_rmu_updates_only_the_down_projections_below_its_layer(micro, micro_target):
    full = micro[0]
    u = unlearn(full, micro_target, "rmu", steps=10, alpha=10.0, lr=1e-2, coeff_scale=4.0, average_over="real")
    layer = u.info["method"]["layer"]
    assert layer == 1
    changed = {n for (n, a), b in zip(u.model.named_parameters(), full.model.parameters(), strict=True)
               if not torch.equal(a, b)}
    assert changed == {f"model.layers.{i}.mlp.down_proj.weight" for i in range(max(0, layer - 2), layer + 1)}
    suite = EvalSuite(full, {"forget": micro_target.all_forget_qa})
    assert suite.run(u)["forget"].mean_nll > suite.run(full)["forget"].mean_nll + 1


@pytest.mark.parametrize("name", ["memit_empty", "memit_entropy"])
def test_memit_edits_only_its_band(micro, micro_target, name):
    full = micro[0]
    u = unlearn(full, micro_target, name, mom2_weight=30.0, clamp_norm=0.75)
    assert u.info["method"]["layers"] == [0]
    changed = {n for (n, a), b in zip(u.model.named_parameters(), full.model.parameters(), strict=True)
               if not torch.equal(a, b)}
    assert changed == {"model.layers.0.mlp.down_proj.weight"}
    suite = EvalSuite(full, {"forget": micro_target.all_forget_qa, "unrelated": micro_target.unrelated_qa})
    before, after = suite.accuracies(full), suite.accuracies(u)
    assert after["forget"] < before["forget"] - 0.1
    assert after["unrelated"] > before["unrelated"] - 0.2
    with pytest.raises(UserInputError, match="band must end before the last one"):
        unlearn(full, micro_target, name, layers=[1])
