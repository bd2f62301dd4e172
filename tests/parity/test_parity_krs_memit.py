"""KRS positions (Hong et al. 2024) and MEMIT's penalty on delta against the reference code.

References:
- yihuaihong/Dissecting-FT-Unlearning@6a423fc452870f3d583478a3996d0fc1663d4457:
  Dissecting-FT-Unlearning/Restoration_experiments_llama-30tokens.ipynb (left-padded
  ``question + answer`` batches; ``compute_loss(original.logits[i, -length:], output.logits[i, -length:])``
  = mean squared logit difference over the last ``length`` positions and the vocabulary;
  ``KRS = 1 - new_loss / ori_loss``, averaged over questions);
- kmeng01/memit@80426fd9316cf9a50c5ba15e0912f2c2c5bfe84b:memit/compute_z.py
  (``v_weight_decay * (torch.norm(delta) / torch.norm(target_init) ** 2)``).
"""

from __future__ import annotations

import pytest
import torch
from parity_helpers import PAD, VOCAB

from unlearn_audit.attacks.patching import (
    PatchingParams,
    answer_mask,
    encode_teacher_forced,
    krs,
    per_row_mse,
)
from unlearn_audit.methods.memit import MEMITParams, delta_penalty


def _rows(seed):
    g = torch.Generator().manual_seed(seed)
    lengths = [(5, 3), (3, 6), (7, 2)]
    prompts = [torch.randint(3, VOCAB, (p,), generator=g).tolist() for p, _ in lengths]
    answers = [torch.randint(3, VOCAB, (a,), generator=g).tolist() for _, a in lengths]
    return prompts, answers


def test_krs_compares_the_notebooks_positions(models):
    """Ours on right-padded rows equals the notebook's ``logits[i, -length:]`` on each row alone
    (no padding, so no position-id question), for the unlearned and a 'restored' model."""
    vanilla, unlearned = models
    restored = type(vanilla)(vanilla.config)
    torch.manual_seed(5)
    with torch.no_grad():
        for a, b, c in zip(restored.parameters(), vanilla.parameters(), unlearned.parameters(), strict=True):
            a.copy_(0.7 * b + 0.3 * c)      # halfway back to the vanilla model
    restored.eval()
    prompts, answers = _rows(0)
    batch = encode_teacher_forced(prompts, answers, PAD)
    assert PatchingParams().positions == "notebook"
    mask = answer_mask(batch)
    with torch.no_grad():
        lv, lu, lr = (m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                      for m in (vanilla, unlearned, restored))
        ours = krs(per_row_mse(lr, lv, mask), per_row_mse(lu, lv, mask))
        ref = []
        for p, a in zip(prompts, answers, strict=True):
            x = torch.tensor([p + a])
            v, u, r = (m(x).logits[0] for m in (vanilla, unlearned, restored))
            n = len(a)
            ori_loss = torch.mean((v[-n:] - u[-n:]) ** 2)
            new_loss = torch.mean((v[-n:] - r[-n:]) ** 2)
            ref.append(float(1 - new_loss / ori_loss))
    assert ours == pytest.approx(sum(ref) / len(ref), abs=1e-5)


def test_krs_positions_by_hand():
    # prompt of 3 tokens, answer of 2: the notebook's last 2 positions are 3 and 4; "answer" takes 2 and 3
    batch = encode_teacher_forced([[5, 6, 7]], [[8, 9]], PAD, width=7)
    assert answer_mask(batch).nonzero()[:, 1].tolist() == [3, 4]
    assert answer_mask(batch, "answer").nonzero()[:, 1].tolist() == [2, 3]


def test_memit_penalty_is_compute_z():
    g = torch.Generator().manual_seed(0)
    delta, h = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g) * 3
    ref = torch.stack([torch.norm(d) / torch.norm(x) ** 2 for d, x in zip(delta, h, strict=True)])
    assert torch.allclose(delta_penalty(delta, h.norm(dim=-1)), ref, atol=1e-6)
    assert MEMITParams().penalty == "memit"
    # by hand: |h| 10, |delta| 5 -> 5 / 100 = 0.05 (ours before, squared: 25 / 100 = 0.25)
    one = torch.tensor([[5.0, 0.0]])
    assert float(delta_penalty(one, torch.tensor([10.0]))[0]) == pytest.approx(0.05)
    assert float(delta_penalty(one, torch.tensor([10.0]), "squared")[0]) == pytest.approx(0.25)
