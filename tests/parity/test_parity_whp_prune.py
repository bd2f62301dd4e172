"""Who's Harry Potter's generic labels and selective pruning's neuron scores against the reference
code's formulas (re-derived here), on tiny random Llamas and fixed right-padded batches.

References:
- swj0419/muse_bench@fcd6651da8bcf34744fb9a1cc69bb856ab3eb277:baselines/baselines/whos_harry_potter.py
  (``WHPModelForCausalLM.forward``: ``v_b - alpha * relu(v_r - v_b)`` on the logits of the
  baseline and the reinforced model; position t predicts token t + 1, HF's shift);
- nickypro/taker@1f5a5b4897992465706aa84580096959f7380464:src/taker/scoring.py
  (``score_indices_by_abs``: ``cripple / (focus + eps)`` of ``pos_mass + |neg_mass|``),
  :src/taker/data_classes.py (``ActivationCollector.add``: one point per token, positive and
  negative parts averaged over every point; ``PruningConfig.ff_eps`` 1e-3),
  :src/taker/prune.py (``score_and_prune`` passes ``ff_eps``), :src/taker/activations.py
  (``get_top_frac``: the top ``int(frac * n)`` of all scores at once). Texts are run one at a
  time there (no padding); here they are padded batches, which must not change a number.
"""

from __future__ import annotations

import pytest
import torch
from parity_helpers import qa_batch

from unlearn_audit.methods.prune import PruneParams, mean_abs_coefficients, top_fraction
from unlearn_audit.methods.whp import WHPParams, generic_labels


def rows(batch):
    """The unpadded token rows of a right-padded batch."""
    return [ids[:int(m.sum())] for ids, m in zip(batch["input_ids"], batch["attention_mask"], strict=True)]


def muse_whp_labels(baseline, reinforced, batch, alpha):
    """MUSE's WHP logits on each row alone; their argmax at t is the label of token t + 1."""
    labels = batch["labels"].clone()
    for i, ids in enumerate(rows(batch)):
        with torch.no_grad():
            v_b = baseline(input_ids=ids[None]).logits[0]
            v_r = reinforced(input_ids=ids[None]).logits[0]
        logits = v_b - alpha * torch.relu(v_r - v_b)
        for t in range(1, len(ids)):
            if labels[i, t] != -100:
                labels[i, t] = int(logits[t - 1].argmax())
    return labels


@pytest.mark.parametrize("alpha", [1.0, WHPParams().alpha])   # MUSE's default, the paper's (ours)
def test_whp_generic_labels_are_muse_logits_argmax(models, alpha):
    baseline, reinforced = models
    batch = qa_batch(20, ((5, 4), (3, 6), (8, 2), (2, 3)))
    ours = generic_labels(baseline, reinforced, batch, alpha)
    reference = muse_whp_labels(baseline, reinforced, batch, alpha)
    assert torch.equal(ours, reference)
    assert (ours != batch["labels"]).any()      # the labels did change: the test compares something


def taker_mean_abs(model, batch) -> torch.Tensor:
    """taker's ``pos_mass + |neg_mass|`` at the down projection's input, per layer, float64, one
    point per token of each text run alone."""
    layers = model.model.layers
    pos = torch.zeros(len(layers), model.config.intermediate_size, dtype=torch.float64)
    neg = torch.zeros_like(pos)
    n_points = 0
    captured = {}
    handles = [layer.mlp.down_proj.register_forward_pre_hook(
        lambda _m, args, i=i: captured.__setitem__(i, args[0][0].double())) for i, layer in enumerate(layers)]
    try:
        for ids in rows(batch):
            with torch.no_grad():
                model(input_ids=ids[None])
            for i in range(len(layers)):
                points = captured[i]                                   # (T, d_mlp)
                positive = points > 0
                pos[i] += (points * positive).sum(0)
                neg[i] += (points * ~positive).sum(0)
            n_points += len(ids)
    finally:
        for h in handles:
            h.remove()
    return pos / n_points + (neg / n_points).abs()


def taker_top_frac(scores: torch.Tensor, frac: float) -> torch.Tensor:
    k = int(frac * scores.numel())
    chosen = torch.zeros(scores.numel(), dtype=torch.bool)
    chosen[torch.topk(scores.flatten(), k, largest=True, sorted=False).indices] = True
    return chosen.reshape(scores.shape)


def test_selective_pruning_scores_and_choice_are_taker_abs(models):
    model = models[0]
    forget = qa_batch(21, ((5, 4), (3, 6), (8, 2)))
    retain = qa_batch(22, ((4, 4), (2, 2), (7, 5), (3, 3)))
    eps = PruneParams().eps
    assert eps == 1e-3                                                 # taker's PruningConfig.ff_eps

    ours_forget = mean_abs_coefficients(model, forget, batch_size=2)  # padded batches of 2
    ours_retain = mean_abs_coefficients(model, retain, batch_size=3)
    ref_forget, ref_retain = taker_mean_abs(model, forget), taker_mean_abs(model, retain)
    torch.testing.assert_close(ours_forget.double(), ref_forget, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_retain.double(), ref_retain, rtol=1e-5, atol=1e-6)

    ours_scores = ours_forget / (ours_retain + eps)
    ref_scores = (ref_forget / (ref_retain + eps)).float()
    torch.testing.assert_close(ours_scores, ref_scores, rtol=1e-5, atol=1e-6)

    frac = 0.1
    chosen = top_fraction(ours_scores, frac, "global", torch.ones_like(ours_scores, dtype=torch.bool))
    assert torch.equal(chosen, taker_top_frac(ref_scores, frac))
    assert int(chosen.sum()) == int(frac * ours_scores.numel())
