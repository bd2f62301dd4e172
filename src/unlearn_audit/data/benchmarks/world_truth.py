"""The built-in world scored the way TOFU scores its authors.

TOFU's truth ratio compares a paraphrased true answer with perturbed answers: wrong answers in
the same style. The built-in world has the perfect perturbations: the *other entities' values
of the same attribute* (another city for "grew up in", another profession). :func:`tofu_style`
gives a world target TOFU's evaluation rows (``target.benchmark.truth``: forget = both forget
halves, retain = the retain QA), so truth ratio, forget quality against the oracle and the
other TOFU numbers (``metrics/tofu.py``) apply to any model audited on the world. The world
has no paraphrased answers: the answer itself plays the paraphrase (as TOFU does for its real
authors and world facts).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace

from .items import BenchmarkData, TruthItem

N_PERTURBED = 5  # as TOFU's forget sets


def truth_rows(target) -> dict[str, list[TruthItem]]:
    """A target's TOFU truth rows by set: a benchmark's own (``tofu:``), a world target's from
    :func:`tofu_style`, or none."""
    if target.benchmark is not None:
        return target.benchmark.truth or {}
    if target.source.get("world"):
        return tofu_style(target).benchmark.truth
    return {}


def tofu_style(target, n_perturbed: int = N_PERTURBED, seed: int = 0):
    """A copy of a world ``target`` with TOFU-style truth rows (see the module docstring); a
    target that has benchmark rows already is returned as it is."""
    if target.benchmark is not None:
        return target
    sets = [target.all_forget_qa, target.retain_qa, target.unrelated_qa]
    pool: dict[str, set[str]] = defaultdict(set)
    for qa in sets:
        for q in qa:
            if q.attribute:
                pool[q.attribute].add(q.answer)
    rng = random.Random(f"{seed}-{target.name}-perturbed")

    def rows(qa):
        out = []
        for q in qa:
            others = sorted(pool.get(q.attribute, set()) - {q.answer})
            if q.kind != "qa" or not others:
                continue
            out.append(TruthItem(q.question, q.answer, q.answer, tuple(rng.sample(others, min(n_perturbed, len(others))))))
        return out

    truth = {k: v for k, v in (("forget", rows(target.all_forget_qa)), ("retain", rows(target.retain_qa))) if v}
    return replace(target, benchmark=BenchmarkData("tofu", f"world:{target.name}", truth=truth))
