"""Membership inference: LOSS, zlib, Min-K%, Min-K%++, the AUC and MUSE's PrivLeak against the
reference code's formulas (re-derived here), on a tiny random Llama.

References:
- swj0419/muse_bench@fcd6651da8bcf34744fb9a1cc69bb856ab3eb277:metrics/privleak.py (scores,
  ROC with the forget set as label 0 and the holdout as 1) and :eval.py (PrivLeak,
  ``privleak_auc_key = 'forget_holdout_Min-40%'``);
- locuslab/open-unlearning@d3d7cf9e6b3c125d16687d4232680d8d83548f1a:src/evals/metrics/privacy.py
  (PrivLeak on ``1 - AUC``), :configs/eval/muse_metrics/mia_min_k.yaml (k 0.4);
- zjysteven/mink-plus-plus@5596c65dd7d5ca767c0efa80cbebf76f2e56d0a2:run.py (LOSS, zlib, Min-K%,
  Min-K%++ over every predicted token).
"""

from __future__ import annotations

import inspect
import zlib

import numpy as np
import pytest
import torch
from parity_helpers import VOCAB

from unlearn_audit.attacks.mia import MIAParams
from unlearn_audit.metrics.mia import auc, mia_scores, privleak

TEXTS = ["the cat sat on the mat today", "a quick brown fox", "lorem ipsum dolor sit amet, consectetur",
         "zebra", "hello world, hello again and again", "ab"]


class CharTokenizer:
    """A deterministic stand-in tokenizer: one token per character (no hub, no training)."""

    pad_token_id = 0
    eos_token_id = 2

    def __call__(self, texts, truncation=True, max_length=256, **_):
        return {"input_ids": [[3 + ord(c) % (VOCAB - 3) for c in t][:max_length] for t in texts]}


def reference_scores(model, ids: list[int], text: str, k: float) -> dict[str, float]:
    """One text, as the Min-K%++ paper's run.py scores it (higher = member)."""
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(x).logits[0, :-1]          # float32, the model dtype, as run.py
    log_probs = torch.log_softmax(logits, -1)
    probs = log_probs.exp()
    token = log_probs.gather(-1, x[0, 1:, None])[:, 0]
    ll = float(token.mean())
    mu = (probs * log_probs).sum(-1)
    sigma = (probs * log_probs ** 2).sum(-1) - mu ** 2
    n = max(1, int(len(token) * k))
    plus = (token - mu) / sigma.sqrt()
    return {"loss": ll, "zlib": ll / len(zlib.compress(bytes(text, "utf-8"))),
            "min_k": float(np.mean(np.sort(token.numpy())[:n])),
            "min_k_plus_plus": float(np.mean(np.sort(plus.numpy())[:n]))}


def muse_auc(forget_scores, holdout_scores) -> float:
    """MUSE's sweep(): ROC of score -PPL with the forget texts labelled 0 and the holdout 1; the
    area under that step curve is P(holdout > forget) + P(tie) / 2 (written out pairwise)."""
    f, h = np.asarray(forget_scores)[:, None], np.asarray(holdout_scores)[None, :]
    return float(((h > f) + 0.5 * (h == f)).mean())


def test_scores_match_the_min_k_plus_plus_code(models):
    model = models[0]
    tok = CharTokenizer()
    ours = mia_scores(model, tok, TEXTS)          # default k
    for i, text in enumerate(TEXTS):
        ids = tok([text])["input_ids"][0]
        if len(ids) < 2:
            continue
        ref = reference_scores(model, ids, text, k=0.4)
        for score, value in ref.items():
            assert ours[score][i] == pytest.approx(value, abs=1e-5), (score, text)


def test_min_k_default_is_muse_k_0_4():
    assert inspect.signature(mia_scores).parameters["k"].default == 0.4
    assert MIAParams().k == 0.4


def test_auc_is_member_higher_and_muse_auc_is_its_complement():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(0.3, 1, 40).round(1), rng.normal(0, 1, 30).round(1)  # ties included
    ours = auc(members, nonmembers)
    f, h = members[:, None], nonmembers[None, :]
    assert ours == pytest.approx(float(((f > h) + 0.5 * (f == h)).mean()), abs=1e-12)
    assert muse_auc(members, nonmembers) == pytest.approx(1 - ours, abs=1e-12)


def test_privleak_is_muse_eval_py():
    rng = np.random.default_rng(1)
    for _ in range(20):
        s = [rng.normal(rng.normal(), 1, n) for n in (25, 25, 25, 25)]
        ours_u, ours_r = auc(s[0], s[1]), auc(s[2], s[3])
        a_u, a_r = muse_auc(s[0], s[1]), muse_auc(s[2], s[3])
        assert privleak(ours_u, ours_r) == pytest.approx((a_u - a_r) / a_r * 100, abs=1e-9)


def test_privleak_by_hand():
    # member-higher AUC: unlearned 0.3, retrained 0.6 -> MUSE's AUCs 0.7 and 0.4: (0.7 - 0.4) / 0.4 * 100
    assert privleak(0.3, 0.6) == pytest.approx(75.0)
    assert privleak(0.6, 0.6) == 0.0
    assert privleak(0.9, 0.5) == pytest.approx(-80.0)   # still separates members: MUSE's sign is negative
    assert privleak(0.5, 1.0) is None
