"""Concept-neuron saliency and its tracking over relearning (Lo, Cohen & Barez 2024)."""

import pytest
import torch

from unlearn_audit.api import audit, unlearn
from unlearn_audit.attacks.reemergence import (
    ConceptProbe,
    Tracker,
    by_layer,
    concept_probe,
    jaccard,
    saliency,
    spearman,
    top_set,
)
from unlearn_audit.subject.sites import value_vectors


class _Toy(torch.nn.Module):
    """Token id -> one-hot-ish hidden (d=4) -> an MLP with 3 neurons; neuron 1 fires only on
    token 7 (the 'concept' token)."""

    def __init__(self):
        super().__init__()
        self.config = type("C", (), {"model_type": "toy"})()
        self.embed = torch.nn.Embedding(10, 4)
        with torch.no_grad():
            self.embed.weight.zero_()
            self.embed.weight[:, 0] = 1.0
            self.embed.weight[7, 1] = 1.0
        block = torch.nn.Module()
        block.attention = torch.nn.Identity()
        block.mlp = torch.nn.Module()
        block.mlp.up = torch.nn.Linear(4, 3, bias=False)
        block.mlp.down_proj = torch.nn.Linear(3, 4, bias=False)
        with torch.no_grad():
            block.mlp.up.weight.copy_(torch.tensor([[0.5, 0, 0, 0], [0, 2.0, 0, 0], [0.3, 0, 0, 0]]))
        self.layers = torch.nn.ModuleList([block])

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        h = self.embed(input_ids)
        for block in self.layers:
            h = h + block.mlp.down_proj(torch.relu(block.mlp.up(h)))
        return h


def test_a_neuron_firing_only_on_concept_inputs_is_the_most_salient():
    ids_concept = torch.tensor([[7, 7, 3]])
    ids_other = torch.tensor([[3, 4, 5]])
    probe = ConceptProbe({"input_ids": ids_concept, "attention_mask": torch.ones_like(ids_concept)},
                         {"input_ids": ids_other, "attention_mask": torch.ones_like(ids_other)},
                         torch.tensor([7]), top_frac=0.34)
    scores = saliency(_Toy(), probe)
    assert scores.shape == (1, 3)
    # neuron 1: mean activation 2 * 2/3 on concept tokens, 0 elsewhere; neurons 0 and 2 equal on both
    assert scores[0].tolist() == pytest.approx([0.0, 4 / 3, 0.0], abs=1e-6)
    assert top_set(scores, 0.34).tolist() == [[False, True, False]]
    assert by_layer(scores, 0.34) == pytest.approx([4 / 3])


def test_overlap_measures():
    a = torch.tensor([[True, False, True, False]])
    assert jaccard(a, a) == 1.0 and jaccard(a, ~a) == 0.0
    assert jaccard(a, torch.tensor([[True, True, False, False]])) == pytest.approx(1 / 3)
    x = torch.tensor([[0.1, 0.5, 0.3, 0.9]])
    assert spearman(x, x) == pytest.approx(1.0) and spearman(x, -x) == pytest.approx(-1.0)


def test_tracking_zero_steps_is_the_static_saliency(micro, micro_target):
    full = micro[0]
    probe = concept_probe(full, micro_target)
    static = saliency(full.model, probe)
    r = audit(full, {"none": unlearn(full, micro_target, "none")}, micro_target, attacks=["rtt"],
              attack_params={"rtt": {"checkpoints": [0], "bootstrap": 0}})
    block = r["methods"]["none"]["attacks"]["rtt"]["reemergence"]
    assert block["steps"] == [0]
    assert block["saliency_by_layer"]["none"][0] == pytest.approx(by_layer(static, probe.top_frac))
    assert block["overlap_with_original"]["none"] == [1.0] and block["rank_correlation"]["none"][0] == pytest.approx(1.0)
    assert block["new_top_by_layer"]["none"] == [[0, 0]]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in full.model.modules())


def test_tracking_over_relearning(micro, micro_target):
    full, oracle = micro
    ga = unlearn(full, micro_target, "gradient_ascent", steps=30, lr=1e-4)
    r = audit(full, {"ga": ga}, micro_target, attacks=["rtt"], oracle=oracle,
              attack_params={"rtt": {"checkpoints": [0, 5, 20], "bootstrap": 0}})
    block = r["methods"]["ga"]["attacks"]["rtt"]["reemergence"]
    assert set(block["overlap_with_original"]) == {"ga", "original", "oracle"}
    # before relearning, each overlap is the Jaccard index of top sets computed here from scratch
    probe = concept_probe(full, micro_target)
    reference_top = top_set(saliency(full.model, probe), probe.top_frac)
    for label, subject in (("ga", ga), ("oracle", oracle), ("original", full)):
        top = top_set(saliency(subject.model, probe), probe.top_frac)
        union = int((top | reference_top).sum())
        assert len(block["overlap_with_original"][label]) == 3
        assert block["overlap_with_original"][label][0] == pytest.approx(int((top & reference_top).sum()) / union), label
    # the unlearned model starts from the original's neurons; the oracle never had them
    assert block["overlap_with_original"]["ga"][0] > block["overlap_with_original"]["oracle"][0]
    assert len(block["saliency_by_layer"]["oracle"][0]) == 2
    assert len(block["meaningful_top_fraction"]["ga"]) == 3


def test_tracker_follows_the_original_top_neurons_being_killed_and_regrown(micro, micro_target):
    """A copy of the original with its top concept neurons' value vectors zeroed, then the
    original itself: the tracker sees no overlap, then full overlap; the dead neurons score 0
    and their regrowth is the original's norm over the live mean, computed here."""
    full = micro[0]
    probe = concept_probe(full, micro_target)
    scores = saliency(full.model, probe)
    top = top_set(scores, probe.top_frac)
    killed = full.copy()
    with torch.no_grad():
        for layer in range(top.shape[0]):
            value_vectors(killed.model, layer)[top[layer]] = 0
    t = Tracker(probe, scores)
    t(killed.model)
    t(full.model)
    s = t.summary()
    assert s["dead_at_start"] == int(top.sum()) > 0
    killed_top = top_set(saliency(killed.model, probe), probe.top_frac)
    assert not bool((killed_top & top).any())                       # no killed neuron is in the top set
    assert s["overlap_with_original"] == [0.0, 1.0]
    assert s["new_top_by_layer"][0] == killed_top.sum(1).tolist() and s["new_top_by_layer"][1] == [0] * top.shape[0]
    assert s["rank_correlation"][1] == pytest.approx(1.0) and s["rank_correlation"][0] < 1.0
    norms = torch.stack([value_vectors(full.model, i).detach().float().norm(dim=1) for i in range(top.shape[0])])
    assert s["dead_revival"][0] == 0.0
    assert s["dead_revival"][1] == pytest.approx(float(norms[top].mean() / norms[~top].mean()), rel=1e-5)


def test_pruned_neurons_score_zero_and_their_regrowth_is_followed(micro, micro_target):
    full = micro[0]
    pruned = unlearn(full, micro_target, "prune_neurons", frac=0.1)
    probe = concept_probe(full, micro_target)
    scores = saliency(pruned.model, probe)
    dead = torch.stack([(value_vectors(pruned.model, i) == 0).all(1) for i in range(2)])
    assert int(dead.sum()) == pruned.info["method"]["pruned"] > 0
    assert bool((scores[dead] == 0).all()) and bool((scores[~dead] != 0).any())
    r = audit(full, {"pruned": pruned}, micro_target, attacks=["forget_data"],
              attack_params={"forget_data": {"checkpoints": [0, 10], "bootstrap": 0}})
    block = r["methods"]["pruned"]["attacks"]["forget_data"]["reemergence"]
    assert block["dead_at_start"]["pruned"] == int(dead.sum()) and block["dead_at_start"]["original"] == 0
    revival = block["dead_revival"]["pruned"]
    assert revival[0] == 0.0 and 0 < revival[1] < 1  # relearning regrows them, not (yet) fully
