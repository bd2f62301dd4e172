"""ROUGE as the benchmarks compute it, and free-text greedy generations to score with it.

TOFU and MUSE score generations with Google's ``rouge_score`` package; this module re-derives
what they use, so numbers match without that dependency:

- tokens: the text lower-cased, every run of characters outside ``[a-z0-9]`` replaced by a
  space, split on whitespace; with stemming, words longer than 3 characters go through the
  Porter stemmer (NLTK's ``PorterStemmer``, which ``rouge_score`` uses);
- ROUGE-L: with ``L`` the longest common subsequence of reference and hypothesis tokens,
  ``precision = L / |hyp|``, ``recall = L / |ref|``, ``F1 = 2PR / (P + R)``; all 0 when either
  side has no token.

TOFU reports ROUGE-L **recall** with stemming (locuslab/open-unlearning@d3d7cf9e6b3c125d16687d4232680d8d83548f1a:src/evals/metrics/utils.py,
``eval_text_similarity``, ``RougeScorer(..., use_stemmer=True)``); MUSE reports ROUGE-L **F1**
without stemming (swj0419/muse_bench@fcd6651da8bcf34744fb9a1cc69bb856ab3eb277:metrics/logger.py).
Stemming needs ``nltk`` (installed with the ``benchmarks`` extra): ``stem=None`` stems when it
is installed and says so in the results (``rouge_stemmer``), ``stem=True`` requires it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from ..errors import UserInputError

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def stemmer(stem: bool | None) -> Callable[[str], str] | None:
    """The Porter stemmer for ``stem`` = True / None (when nltk is installed), else None."""
    if stem is False:
        return None
    try:
        from nltk.stem.porter import PorterStemmer
    except ImportError:
        if stem:
            raise UserInputError("ROUGE with stemming (TOFU's default) needs nltk: pip install "
                                 "'unlearn-audit[benchmarks]', or set rouge_stem=false") from None
        return None
    return PorterStemmer().stem


def rouge_tokens(text: str, stem: Callable[[str], str] | None = None) -> list[str]:
    words = _NON_ALNUM.sub(" ", text.lower()).split()
    if stem is not None:
        words = [stem(w) if len(w) > 3 else w for w in words]
    return [w for w in words if w]


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_scores(hypothesis: str, reference: str,
                   stem: Callable[[str], str] | None = None) -> tuple[float, float, float]:
    """(precision, recall, F1) of ROUGE-L (see the module docstring)."""
    h, r = rouge_tokens(hypothesis, stem), rouge_tokens(reference, stem)
    if not h or not r:
        return 0.0, 0.0, 0.0
    lcs = lcs_length(r, h)
    p, rec = lcs / len(h), lcs / len(r)
    return p, rec, (2 * p * rec / (p + rec) if p + rec > 0 else 0.0)


def generate_text(subject, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 32,
                  template: bool = True) -> list[str]:
    """Greedy continuations of ``prompts`` (in the subject's prompt template when ``template``,
    else raw), decoded without special tokens and stripped; generation stops at EOS or after
    ``max_new_tokens`` tokens."""
    from ..world import QA
    from .generation import greedy_continuations

    items = [QA(p, "", "qa" if template else "completion") for p in prompts]
    _, rows = greedy_continuations(subject, items, max_new_tokens, batch_size)
    return [subject.tokenizer.decode(r, skip_special_tokens=True).strip()
            for r in rows]
