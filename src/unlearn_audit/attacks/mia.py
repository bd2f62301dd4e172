"""Membership inference: can the forget texts still be told apart from never-seen ones?

MUSE (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models") and
open-unlearning score every text of the forget set and of a *holdout* set from the same
distribution that no model was trained on, and report the AUC with which a score separates the
two (scores and AUC: :mod:`unlearn_audit.metrics.mia`: LOSS, zlib ratio, Min-K% with k = 40%,
Min-K%++). The original separates them (it memorised the forget set); a model that never saw
the forget set — the oracle — sits where the holdout's distribution puts it (near 0.5, but on
the organism not exactly: the tokenizer was fitted on the forget texts too); a method that
removed the concept lands near the oracle, and one whose AUC stays near the original's still
carries the membership signal. An AUC far *below* the oracle's is over-unlearning, which leaks
too (MUSE's PrivLeak is signed).

Members are the target's ``forget_text``; non-members its ``holdout_text``: on the built-in
world, the sentences and bios of as many new entities of the concept, generated from the same
templates and vocabularies (:func:`unlearn_audit.world.holdout_entities`); for a target
directory, ``holdout.jsonl``.

This audit only reads the models. With AUC the headline score's AUC (``score``, default
``min_k`` with k 0.4, MUSE's ``Min-40%``) and 0.5 the AUC of a model with no membership signal in place of
"unlearned" in the recovery of
:mod:`unlearn_audit.metrics.recovery`:

    recovery = (AUC_unlearned - 0.5) / (AUC_original - 0.5)
    residual = (AUC_unlearned - AUC_oracle) / (AUC_original - AUC_oracle)
    privleak = ((1 - AUC_unlearned) - (1 - AUC_oracle)) / (1 - AUC_oracle) * 100   (MUSE, percent)

(MUSE's AUC is ``1 - AUC`` in our member-higher orientation: :func:`~unlearn_audit.metrics.mia.privleak`.)

per score, under ``scores``; the headline score's values are ``recovery`` and ``residual``.
"""

from __future__ import annotations

from pydantic import Field

from ..errors import UserInputError
from ..metrics.mia import SCORES, auc, mia_scores, privleak
from ..metrics.recovery import recovery, residual
from .base import Attack, AttackParams, register_attack


class MIAParams(AttackParams):
    score: str = Field("min_k", pattern="^(loss|zlib|min_k|min_k_plus_plus)$",
                       description="Score whose AUC is the headline: loss, zlib, min_k or min_k_plus_plus.")
    k: float = Field(0.4, gt=0, le=1, description="Fraction of lowest-scoring tokens for Min-K% and Min-K%++ "
                     "(0.4: MUSE's and open-unlearning's default).")
    max_length: int = Field(256, ge=2, description="Tokens per text (longer texts are truncated).")
    batch_size: int = Field(32, ge=1)


def aucs(subject, members, nonmembers, params: MIAParams) -> dict[str, float]:
    """AUC of every score on members vs non-members for one subject."""
    def score(texts):
        return mia_scores(subject.model, subject.tokenizer, texts, params.k, params.max_length, params.batch_size)

    m, n = score(members), score(nonmembers)
    return {s: auc(m[s], n[s]) for s in SCORES}


@register_attack
class MembershipInference(Attack):
    name = "mia"
    Params = MIAParams
    summary = "membership inference forget vs never-seen holdout texts: LOSS, zlib, Min-K%, Min-K%++ AUC (MUSE)"

    def setup(self, original, target, params: MIAParams, references=None) -> dict:
        members, nonmembers = list(target.forget_text), list(target.holdout_text)
        if not members:
            raise UserInputError("mia needs forget texts ({\"text\": ...} lines in forget.jsonl)")
        if not nonmembers:
            raise UserInputError("mia needs never-seen texts like the forget texts: add holdout.jsonl with "
                                 "{\"text\": ...} lines to the target directory")
        return {"members": members, "nonmembers": nonmembers}

    def measure(self, subject, setup: dict, params: MIAParams, role: str) -> dict:
        a = aucs(subject, setup["members"], setup["nonmembers"], params)
        if role == "original":
            return {**a, "members": len(setup["members"]), "nonmembers": len(setup["nonmembers"]),
                    "score": params.score}
        return a

    def score(self, a: dict, original: dict, oracle: dict | None, setup, params: MIAParams, name: str) -> dict:
        per_score = {}
        for s in SCORES:
            orc = oracle[s] if oracle is not None else None
            per_score[s] = {
                "auc": a[s],
                "recovery": recovery(a[s], 0.5, original[s]),
                "residual": residual(a[s], orc, original[s], orc) if orc is not None else None,
                "privleak": privleak(a[s], orc) if orc is not None else None}
        head = per_score[params.score]
        return {"recovery": head["recovery"], "residual": head["residual"], "auc": head["auc"],
                "privleak": head["privleak"], "scores": per_score}
