"""Unlearning losses against the reference code's formulas (re-derived here), on two tiny random
Llamas (the trained model and the frozen reference) and fixed right-padded QA batches.

References:
- locuslab/open-unlearning@d3d7cf9e6b3c125d16687d4232680d8d83548f1a:src/trainer/utils.py
  (``compute_batch_nll``, ``compute_dpo_loss`` with ``-2/beta``, ``compute_kl_divergence``),
  :src/trainer/unlearn/grad_diff.py (retain NLL = the HF mean loss), :src/trainer/unlearn/npo.py,
  :src/trainer/unlearn/simnpo.py (delta inside beta), :configs/trainer/DPO.yaml;
- locuslab/tofu@bdc209ea7c6cc2e7079ea1afb6468d3ddcc65f8e:dataloader.py (``grad_ascent``,
  ``grad_diff``, ``KL`` over every position, ``dpo`` without 2/beta or retain term);
- centerforaisafety/wmdp ``rmu/unlearn.py`` (no snapshot of that repository could be fetched
  here; its loss as republished in derived repositories: ``mse_loss`` over the whole
  ``(B, T, d)`` activation tensor, pads included, for both terms).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from parity_helpers import qa_batch

from unlearn_audit.methods.base import reference_logprobs, retain_kl
from unlearn_audit.methods.dpo import DPO
from unlearn_audit.methods.gradient_ascent import GradientAscent
from unlearn_audit.methods.gradient_difference import GradientDifference
from unlearn_audit.methods.kl import KLMinimisation
from unlearn_audit.methods.npo import NPO, NPOKL, NPOGradientDifference
from unlearn_audit.methods.rmu import RMU
from unlearn_audit.methods.simnpo import SimNPO

TOL = 1e-5


def hf_loss(model, batch):
    """The HF mean token loss (what ``outputs.loss`` is in TOFU and open-unlearning)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def batch_nll(model, batch):
    """open-unlearning compute_batch_nll: summed CE of the labelled next tokens per row."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=-100, reduction="none")
    return ce.sum(-1)


def kl_all_positions(model, ref, batch):
    """TOFU / open-unlearning KL: kl_div(batchmean, log_target) over the flattened (B*T, V)."""
    v = model.config.vocab_size
    with torch.no_grad():
        ref_lp = F.log_softmax(ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
    cur_lp = F.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
    return F.kl_div(cur_lp.reshape(-1, v), ref_lp.reshape(-1, v), reduction="batchmean", log_target=True)


@pytest.fixture(scope="module")
def batches():
    return {"forget": qa_batch(10), "retain": qa_batch(11, ((5, 4), (2, 2), (7, 3), (4, 6)))}


def close(a, b):
    assert float(a) == pytest.approx(float(b), abs=TOL, rel=TOL)


def test_gradient_ascent_and_difference(models, batches):
    model, ref = models
    ga, gd = GradientAscent(), GradientDifference()
    close(ga.loss(model, batches, ref, ga.params()), -hf_loss(model, batches["forget"]))
    p = gd.params({"retain_weight": 3.0})
    close(gd.loss(model, batches, ref, p), -hf_loss(model, batches["forget"]) + 3.0 * hf_loss(model, batches["retain"]))


def test_retain_kl_over_all_positions_as_tofu_and_open_unlearning(models, batches):
    model, ref = models
    close(retain_kl(model, ref, batches["retain"]), kl_all_positions(model, ref, batches["retain"]))
    # the labelled-positions variant is a different number on the same batch (padding, prompts)
    assert abs(float(retain_kl(model, ref, batches["retain"], "answer"))
               - float(kl_all_positions(model, ref, batches["retain"]))) > 1e-4
    kl = KLMinimisation()
    p = kl.params({"retain_weight": 2.0})
    close(kl.loss(model, batches, ref, p),
          -hf_loss(model, batches["forget"]) + 2.0 * kl_all_positions(model, ref, batches["retain"]))


def _with_ref(model, ref, batch):
    return {**batch, "ref_logprob": reference_logprobs(ref, batch)}


def npo_reference(model, ref, batch, beta):
    """open-unlearning NPO: compute_dpo_loss with lose_inputs only: -2/beta logsigmoid(-beta (log pi - log pi_ref))."""
    lose = -(batch_nll(model, batch) - batch_nll(ref, batch).detach())
    return -2 / beta * F.logsigmoid(beta * (0.0 - lose)).mean()


def test_npo_npo_gd_npo_kl(models, batches):
    model, ref = models
    b = {**batches, "forget": _with_ref(model, ref, batches["forget"])}
    npo = NPO()
    close(npo.loss(model, b, ref, npo.params({"beta": 0.7})), npo_reference(model, ref, batches["forget"], 0.7))
    gd = NPOGradientDifference()
    close(gd.loss(model, b, ref, gd.params({"beta": 0.7, "retain_weight": 2.0})),
          npo_reference(model, ref, batches["forget"], 0.7) + 2.0 * hf_loss(model, batches["retain"]))
    kl = NPOKL()
    close(kl.loss(model, b, ref, kl.params({"beta": 0.7, "retain_weight": 2.0})),
          npo_reference(model, ref, batches["forget"], 0.7) + 2.0 * kl_all_positions(model, ref, batches["retain"]))


def dpo_batches(model, ref, batches):
    chosen = qa_batch(12, ((4, 2), (6, 4), (3, 3)))      # same prompts' lengths, other (refusal) answers
    chosen["input_ids"][:, :3] = batches["forget"]["input_ids"][:, :3]
    rejected = _with_ref(model, ref, batches["forget"])
    rejected["chosen"] = _with_ref(model, ref, chosen)
    return {"forget": rejected, "retain": batches["retain"]}, chosen


def test_dpo_is_open_unlearning_compute_dpo_loss(models, batches):
    model, ref = models
    b, chosen = dpo_batches(model, ref, batches)
    lose = batches["forget"]
    win_log_ratio = -(batch_nll(model, chosen) - batch_nll(ref, chosen).detach())
    lose_log_ratio = -(batch_nll(model, lose) - batch_nll(ref, lose).detach())
    beta = 0.1
    forget = -2 / beta * F.logsigmoid(beta * (win_log_ratio - lose_log_ratio)).mean()
    dpo = DPO()
    # open-unlearning DPO.yaml: gamma 1 x forget + alpha 1 x retain NLL
    close(dpo.loss(model, b, ref, dpo.params({"retain_weight": 1.0})), forget + hf_loss(model, batches["retain"]))
    # TOFU dataloader.py dpo: no 2/beta, no retain term
    tofu = -F.logsigmoid(beta * (win_log_ratio - lose_log_ratio)).mean()
    close(dpo.loss(model, b, ref, dpo.params({"retain_weight": 0.0, "scale": "1"})), tofu)
    assert DPO.Params().beta == 0.1 and DPO.Params().scale == "2/beta"


def test_simnpo_delta_inside_beta(models, batches):
    model, ref = models
    f = batches["forget"]
    beta, delta = 2.5, 0.3
    mask = f["labels"] != -100
    x = batch_nll(model, f) / mask.sum(-1) - delta
    forget = -F.logsigmoid(beta * x).mean() * 2 / beta
    s = SimNPO()
    close(s.loss(model, batches, ref, s.params({"beta": beta, "delta": delta, "retain_weight": 1.5})),
          forget + 1.5 * hf_loss(model, batches["retain"]))
    # the paper's gamma = beta * delta is the same loss
    close(s.loss(model, batches, ref, s.params({"beta": beta, "gamma": beta * delta, "retain_weight": 1.5})),
          forget + 1.5 * hf_loss(model, batches["retain"]))


def test_rmu_averages_pads_in_as_wmdp(models, batches):
    model, ref = models
    layer = 1
    rmu = RMU()
    g = torch.Generator().manual_seed(3)
    u = torch.rand(32, generator=g)
    control = 6.5 * u / u.norm()
    rmu._setup = {"layer": layer, "coeff": 6.5, "target": control}

    def acts(m, batch):      # WMDP forward_with_cache: the output of model.layers[layer]
        cache = []
        h = m.model.layers[layer].register_forward_hook(lambda mod, i, o: cache.append(o[0] if isinstance(o, tuple) else o))
        try:
            m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        finally:
            h.remove()
        return cache[0]

    f, r = batches["forget"], batches["retain"]
    with torch.no_grad():
        frozen = acts(ref, r)
    expected = F.mse_loss(acts(model, f), control.expand_as(acts(model, f))) + 10.0 * F.mse_loss(acts(model, r), frozen)
    close(rmu.loss(model, batches, ref, rmu.params({"alpha": 10.0})), expected)
    # masking the pads out is a different number on padded batches
    assert abs(float(rmu.loss(model, batches, ref, rmu.params({"alpha": 10.0, "average_over": "real"})))
               - float(expected)) > 1e-4
