"""Membership-inference scores of texts and the AUC that separates members from non-members.

Every score is oriented so that *higher means more likely a training member*:

- ``loss`` (Yeom et al. 2018): ``-mean_t log p(x_t | x_<t)``, negated;
- ``zlib`` (Carlini et al. 2021): the mean NLL divided by the zlib-compressed length of the text
  in bytes (a text that is easy to compress is easy to predict anyway), negated;
- ``min_k`` (Min-K% Prob, Shi et al. 2024): the mean of the lowest k% (default 40%, MUSE's and
  open-unlearning's headline ``Min-40%``) token log-probabilities, ``max(1, floor(k n))`` of
  them. Every predicted token of the text counts, the last one included, as in the Min-K%++
  paper's code (open-unlearning's ``tokenwise_logprobs`` drops the last one; see the
  conventions table in docs/metrics.md);
- ``min_k_plus_plus`` (Min-K%++, Zhang et al. 2024): the same over the standardised
  log-probabilities ``(log p(x_t) - mu_t) / sigma_t``, with ``mu_t = E_{z~p(.|x_<t)} log p(z)``
  and ``sigma_t^2 = Var_{z~p(.|x_<t)} log p(z)``.

AUC is the Mann-Whitney statistic ``P(s_member > s_nonmember) + P(equal) / 2``: 0.5 when the
score cannot tell the two sets apart, 1 when every member scores higher. MUSE (Shi et al. 2024)
reports the *complementary* AUC (its ROC labels the forget texts 0 and the holdout 1), so
:func:`privleak`, MUSE's number, is computed on ``1 - AUC``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch

from ..data.encode import encode_texts, take, to_device
from .likelihood import eval_mode, forward_logits

SCORES = ("loss", "zlib", "min_k", "min_k_plus_plus")


def lowest_mean(values: torch.Tensor, mask: torch.Tensor, k: float) -> torch.Tensor:
    """``(B,)`` mean of the lowest ``max(1, floor(k * n_b))`` of each row's masked values
    (``values``, ``mask``: (B, T); a row with no value gets 0)."""
    n = mask.sum(1)                                                            # (B,)
    count = (k * n).floor().clamp(min=1).long()
    ordered = values.masked_fill(~mask, float("inf")).sort(1).values          # (B, T) ascending
    summed = ordered.masked_fill(~torch.isfinite(ordered), 0).cumsum(1)
    picked = summed.gather(1, (count - 1).clamp(max=values.shape[1] - 1)[:, None])[:, 0]
    return torch.where(n > 0, picked / count, torch.zeros_like(picked))


@torch.no_grad()
def mia_scores(model, tokenizer, texts: Sequence[str], k: float = 0.4, max_length: int = 256,
               batch_size: int = 32) -> dict[str, np.ndarray]:
    """Every score of :data:`SCORES` for each text: ``{score: (N,)}`` (0 for a text with a
    single token: nothing to predict)."""
    data = encode_texts(tokenizer, texts, max_length=max_length, add_eos=False)
    compressed = torch.tensor([max(1, len(zlib.compress(t.encode("utf-8")))) for t in texts], dtype=torch.float)
    order = torch.argsort(data["attention_mask"].sum(1), descending=True)      # similar lengths share a batch
    data, compressed = {k: v[order] for k, v in data.items()}, compressed[order]
    device = next(model.parameters()).device
    out: dict[str, list[torch.Tensor]] = {s: [] for s in SCORES}
    with eval_mode(model):
        for i in range(0, len(texts), batch_size):
            batch = to_device(take(data, slice(i, i + batch_size)), device)
            logits = forward_logits(model, batch)[:, :-1].float()               # (B, T-1, V)
            target = batch["labels"][:, 1:]                                       # (B, T-1)
            mask = target != -100
            logp_all = torch.log_softmax(logits, -1)
            logp = logp_all.gather(-1, target.clamp(min=0)[..., None])[..., 0]   # (B, T-1)
            p = logp_all.exp()
            mu = (p * logp_all).sum(-1)                                           # (B, T-1)
            sigma = ((p * logp_all.pow(2)).sum(-1) - mu.pow(2)).clamp(min=1e-12).sqrt()
            z = (logp - mu) / sigma
            mean_logp = (logp * mask).sum(1) / mask.sum(1).clamp(min=1)           # (B,) = -loss
            out["loss"].append(mean_logp.cpu())
            out["zlib"].append(mean_logp.cpu() / compressed[i:i + batch_size])
            out["min_k"].append(lowest_mean(logp, mask, k).cpu())
            out["min_k_plus_plus"].append(lowest_mean(z, mask, k).cpu())
    inverse = torch.argsort(order)
    return {s: torch.cat(v)[inverse].numpy() for s, v in out.items()}


def auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """``P(member score > non-member score) + P(tie) / 2`` from average ranks (O(n log n))."""
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    n_pos, n_neg = len(members), len(nonmembers)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    values = np.concatenate([members, nonmembers])
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)                       # rank (1-based) of the last copy of each value
    average = ends - (counts - 1) / 2.0            # mean rank of a tied group
    ranks = average[inverse]
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def privleak(auc_unlearned: float, auc_retrained: float) -> float | None:
    """MUSE's PrivLeak in percent, from our member-higher AUCs (Shi et al. 2024):

        PrivLeak = (AUC'_unlearned - AUC'_retrained) / AUC'_retrained * 100,  AUC' = 1 - AUC

    MUSE's ``eval.py`` computes it on the AUC of ``metrics/privleak.py``, whose ROC treats the
    holdout as the positive class, i.e. ``AUC' = 1 - AUC`` in our orientation (open-unlearning's
    ``privleak`` flips its AUC the same way). Equivalently ``(AUC_retrained - AUC_unlearned) /
    (1 - AUC_retrained) * 100``: negative when the unlearned model still tells members apart
    (under-unlearning; a model that memorised them: near -100), positive when it scores them
    *below* never-seen texts (over-unlearning), 0 at the retrained model. None when
    ``AUC_retrained`` is 1 (no denominator).
    """
    ref = 1.0 - auc_retrained
    if ref == 0:
        return None
    return ((1.0 - auc_unlearned) - ref) / ref * 100.0
