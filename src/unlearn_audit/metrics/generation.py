"""Free-text answers by batched greedy decoding, and their agreement with reference answers.

Hong et al. 2024 ("Dissecting Fine-Tuning Unlearning in Large Language Models") compare an
unlearned model's greedy answers with the vanilla model's by ROUGE-L and BLEU, on the forget
set (should drop) and on unrelated questions (should stay near 1).

- ROUGE-L (Lin 2004): F1 of the longest common subsequence of lower-cased whitespace tokens,
  ``F = 2PR/(P+R)`` with ``P = LCS/|hyp|``, ``R = LCS/|ref|``.
- BLEU (Papineni et al. 2002) at sentence level with add-one smoothing of the n-gram
  precisions for n > 1 (Lin & Och 2004, "BLEU+1"), uniform weights up to
  ``N = min(4, |ref|)`` (short factual answers have fewer than 4 tokens), brevity penalty
  ``exp(1 - |ref|/|hyp|)`` when the hypothesis is shorter.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch

from ..data.encode import render_prompt, tokenize_prompts
from ..world import QA
from .likelihood import eval_mode
from .rouge import lcs_length


@torch.no_grad()
def greedy_continuations(subject, items: Sequence[QA], max_new_tokens: int = 12,
                         batch_size: int = 64) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt token ids and greedy continuation token ids (left-padded batched decoding), each
    continuation cut after its first EOS (kept)."""
    tok, model = subject.tokenizer, subject.model
    prompts = [render_prompt(q, subject.prompt, tok) for q in items]
    ids = tokenize_prompts(tok, items, prompts, subject.prompt)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[list[int]] = []
    with eval_mode(model):
        for i in range(0, len(ids), batch_size):
            rows = ids[i:i + batch_size]
            width = max(map(len, rows))
            input_ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], device=subject.device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=subject.device)
            gen = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad, eos_token_id=tok.eos_token_id)
            for row in gen[:, width:].tolist():
                if tok.eos_token_id in row:
                    row = row[:row.index(tok.eos_token_id) + 1]
                out.append(row)
    return [list(r) for r in ids], out


def generate_answers(subject, items: Sequence[QA], max_new_tokens: int = 12, batch_size: int = 64) -> list[str]:
    """Greedy answers (left-padded batches), cut at EOS, a newline, or a completion's period."""
    _, continuations = greedy_continuations(subject, items, max_new_tokens, batch_size)
    out = []
    for q, row in zip(items, continuations, strict=True):
        text = subject.tokenizer.decode(row, skip_special_tokens=True).split("\n")[0].strip()
        if q.kind == "completion":
            text = text.split(".")[0].strip()
        out.append(text)
    return out


def _tokens(text: str) -> list[str]:
    return text.lower().split()


def rouge_l(hypothesis: str, reference: str) -> float:
    h, r = _tokens(hypothesis), _tokens(reference)
    if not h or not r:
        return float(h == r)
    lcs = lcs_length(h, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(h), lcs / len(r)
    return 2 * p * rec / (p + rec)


def bleu(hypothesis: str, reference: str) -> float:
    h, r = _tokens(hypothesis), _tokens(reference)
    if not h or not r:
        return float(h == r)
    order = min(4, len(r))
    log_p = 0.0
    for n in range(1, order + 1):
        hn = Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
        rn = Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
        match = sum(min(c, rn[g]) for g, c in hn.items())
        total = max(len(h) - n + 1, 0)
        if n == 1:
            if match == 0:
                return 0.0
            p = match / total
        else:
            p = (match + 1) / (total + 1)
        log_p += math.log(p) / order
    bp = 1.0 if len(h) >= len(r) else math.exp(1 - len(r) / len(h))
    return bp * math.exp(log_p)


def agreement(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-L and BLEU of hypotheses against references (pairwise, same order)."""
    n = max(len(references), 1)
    return {"rougeL": sum(map(rouge_l, hypotheses, references)) / n,
            "bleu": sum(map(bleu, hypotheses, references)) / n}
