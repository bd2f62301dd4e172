"""TOFU's metrics (Maini et al. 2024), re-derived from the reference code.

With ``L(y)`` the mean per-token NLL of answer ``y`` given the question (teacher-forced, in the
subject's prompt template) and ``P(y) = exp(-L(y))``:

- **Answer probability** (``prob``): mean over items of ``P(answer)``; on real authors and world
  facts *normalised*: mean of ``P(answer) / (P(answer) + sum_j P(perturbed_j))``.
- **Truth ratio** per item: ``R = exp(L(paraphrased) - mean_j L(perturbed_j))`` — the
  perturbed answers' geometric-mean normalised probability over the paraphrased answer's
  (real authors and world facts have no paraphrase: the answer itself). Reported on the forget
  set as ``mean(min(R, 1/R))`` (1 = cannot tell true from false), elsewhere as
  ``mean(max(0, 1 - R))`` (higher = prefers the truth).
- **ROUGE-L recall** of the greedy answer (``max_new_tokens`` 200, as open-unlearning's
  generation default) against the answer, with Porter stemming (:mod:`.rouge`).
- **Forget quality**: the p-value of the two-sample Kolmogorov-Smirnov test between the
  unlearned model's per-item forget truth ratios and the retain model's — here the oracle's.
  The oracle against itself gives 1.
- **Model utility**: the harmonic mean of the nine non-forget numbers (prob, ROUGE, truth
  ratio on retain, real authors, world facts); 0 if any is 0.

References: locuslab/tofu@bdc209ea7c6cc2e7079ea1afb6468d3ddcc65f8e:aggregate_eval_stat.py
(``get_forget_quality``, ``get_model_utility``) and
locuslab/open-unlearning@d3d7cf9e6b3c125d16687d4232680d8d83548f1a:src/evals/metrics/memorization.py
(``truth_ratio``, ``probability_w_options``), ``src/evals/metrics/privacy.py`` (``ks_test``).

The KS p-value is the exact two-sided one (the probability that a random interleaving of the
two samples has a statistic at least as large), computed with integer path counting as
``scipy.stats.ks_2samp(..., method="exact")`` does, for samples up to ``EXACT_LIMIT`` cells;
beyond, the Kolmogorov asymptotic series.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

EXACT_LIMIT = 1_000_000  # n1 * n2 up to which the KS p-value is exact


# ----------------------------------------------------------------------------- pure formulas

def truth_ratios(paraphrased_nll: Sequence[float], perturbed_nll: Sequence[Sequence[float]]) -> np.ndarray:
    """``(N,)`` per-item ``R = exp(L_para - mean_j L_pert_j)`` from mean token NLLs."""
    para = np.asarray(paraphrased_nll, float)
    pert = np.array([np.mean(p) for p in perturbed_nll], float)
    return np.exp(para - pert)


def truth_ratio_score(ratios: Sequence[float], forget: bool) -> float:
    """Forget set: ``mean(min(R, 1/R))``; other sets: ``mean(max(0, 1 - R))``."""
    r = np.asarray(ratios, float)
    if forget:
        return float(np.mean(np.minimum(r, 1 / r)))
    return float(np.mean(np.maximum(0.0, 1 - r)))


def answer_prob(answer_nll: Sequence[float], perturbed_nll: Sequence[Sequence[float]] | None = None) -> float:
    """Mean ``P(answer)``; with perturbed answers, normalised against them."""
    p = np.exp(-np.asarray(answer_nll, float))
    if perturbed_nll is None:
        return float(p.mean())
    wrong = np.array([np.exp(-np.asarray(q, float)).sum() for q in perturbed_nll])
    return float(np.mean(p / (p + wrong)))


def harmonic_mean(values: Sequence[float]) -> float:
    v = np.asarray(values, float)
    if len(v) == 0:
        return float("nan")
    if np.any(v <= 0):
        return 0.0
    return float(len(v) / np.sum(1 / v))


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """``max_x |F_a(x) - F_b(x)|`` over the pooled sample (empirical CDFs, ties together)."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    pooled = np.concatenate([a, b])
    fa = np.searchsorted(a, pooled, side="right") / len(a)
    fb = np.searchsorted(b, pooled, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


def _exact_pvalue(n1: int, n2: int, d: float) -> float:
    """P(D >= d) under the null: 1 - (lattice paths from (0,0) to (n1,n2) staying strictly inside
    ``|i/n1 - j/n2| < d``) / C(n1+n2, n1), counted exactly with integers."""
    g = math.gcd(n1, n2)
    lcm = (n1 // g) * n2
    h = int(round(d * lcm))  # d on the lcm grid, as the statistic can only take these values
    if h == 0:
        return 1.0
    limit = h * g  # point (i, j) is inside when |i*n2 - j*n1| < h*g
    row: list[int] = []
    for i in range(n1 + 1):
        new = [0] * (n2 + 1)
        for j in range(n2 + 1):
            if abs(i * n2 - j * n1) < limit:
                new[j] = (1 if i == j == 0 else 0) + (row[j] if row else 0) + (new[j - 1] if j else 0)
        row = new
    total = math.comb(n1 + n2, n1)
    return min(1.0, max(0.0, (total - row[n2]) / total))


def _asymptotic_pvalue(n1: int, n2: int, d: float) -> float:
    en = math.sqrt(n1 * n2 / (n1 + n2))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 1e-3:
        return 1.0
    s = sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return min(1.0, max(0.0, 2 * s))


def ks_pvalue(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided two-sample Kolmogorov-Smirnov p-value (see the module docstring)."""
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return float("nan")
    d = ks_statistic(a, b)
    if n1 * n2 <= EXACT_LIMIT:
        return _exact_pvalue(n1, n2, d)
    return _asymptotic_pvalue(n1, n2, d)


def forget_quality(unlearned_ratios: Sequence[float], oracle_ratios: Sequence[float]) -> float | None:
    """TOFU forget quality: the KS p-value between two models' per-item forget truth ratios."""
    if not len(unlearned_ratios) or not len(oracle_ratios):
        return None
    return ks_pvalue(unlearned_ratios, oracle_ratios)


def add_forget_quality(evaluations: Sequence[dict | None], oracle: dict | None) -> None:
    """Set ``tofu.forget_quality`` (in place) of every evaluation that has TOFU-style forget truth
    ratios, against the oracle's; without an oracle (or its ratios) it is None."""
    reference = ((oracle or {}).get("tofu") or {}).get("forget_truth_ratios")
    for ev in evaluations:
        block = (ev or {}).get("tofu")
        if block is not None:
            ratios = block.get("forget_truth_ratios")
            block["forget_quality"] = forget_quality(ratios, reference) if ratios and reference else None


# ----------------------------------------------------------------------------- on a model

def _mean_nlls(subject, questions: Sequence[str], answers: Sequence[str], batch_size: int) -> np.ndarray:
    from ..world import QA
    from .qa import evaluate_qa

    return evaluate_qa(subject, [QA(q, a.strip()) for q, a in zip(questions, answers, strict=True)],
                       batch_size).nll.numpy().astype(float)


def item_nlls(subject, items, batch_size: int = 64) -> dict[str, np.ndarray | list[np.ndarray]]:
    """Mean token NLL of every item's answer, paraphrased answer and perturbed answers, in one
    batched pass: ``{"answer": (N,), "paraphrased": (N,), "perturbed": [ (K_i,) ...]}``."""
    qs, ans = [], []
    for t in items:
        qs += [t.question, t.question] + [t.question] * len(t.perturbed)
        ans += [t.answer, t.paraphrased] + list(t.perturbed)
    flat = _mean_nlls(subject, qs, ans, batch_size)
    out = {"answer": [], "paraphrased": [], "perturbed": []}
    i = 0
    for t in items:
        out["answer"].append(flat[i])
        out["paraphrased"].append(flat[i + 1])
        out["perturbed"].append(flat[i + 2:i + 2 + len(t.perturbed)])
        i += 2 + len(t.perturbed)
    return {"answer": np.array(out["answer"]), "paraphrased": np.array(out["paraphrased"]),
            "perturbed": out["perturbed"]}


def tofu_scores(subject, target, max_new_tokens: int = 200, rouge_stem: bool | None = None,
                batch_size: int = 64) -> dict:
    """Every TOFU number of ``subject`` on a ``tofu:`` target (forget quality needs a second
    model: :func:`forget_quality` on two results' ``forget_truth_ratios``)."""
    from .rouge import generate_text, rouge_l_scores, stemmer

    stem = stemmer(rouge_stem)
    truth = target.benchmark.truth if target.benchmark else {}
    sets: dict[str, dict] = {}
    ratios_forget: list[float] = []
    for name, items in truth.items():
        nll = item_nlls(subject, items, batch_size)
        forget = name == "forget"
        ratios = truth_ratios(nll["paraphrased"], nll["perturbed"])
        general = name in ("real_authors", "world_facts")
        gens = generate_text(subject, [t.question for t in items], max_new_tokens)
        rouge = [rouge_l_scores(g, t.answer, stem)[1] for g, t in zip(gens, items, strict=True)]
        sets[name] = {"prob": answer_prob(nll["answer"], nll["perturbed"] if general else None),
                      "rouge_l_recall": float(np.mean(rouge)),
                      "truth_ratio": truth_ratio_score(ratios, forget), "n": len(items)}
        if forget:
            ratios_forget = ratios.tolist()
    utility_parts = [sets[k][m] for k in ("retain", "real_authors", "world_facts") if k in sets
                     for m in ("prob", "rouge_l_recall", "truth_ratio")]
    return {"sets": sets, "model_utility": harmonic_mean(utility_parts) if utility_parts else None,
            "forget_truth_ratios": ratios_forget, "rouge_stemmer": "porter" if stem else "none",
            "max_new_tokens": max_new_tokens}
