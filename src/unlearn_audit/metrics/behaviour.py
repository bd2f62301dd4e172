"""Behavioural evaluation of a subject on a target: accuracy and NLL on every QA set.

Headline keys (as in ``results.json``): ``forget_acc`` (RTT train half), ``forget_heldout_acc``
(RTT held-out half), ``retain_acc``, ``unrelated_acc``; ``None`` when the target has no such
set. ``sets`` has accuracy/NLL/size for every evaluation set, including the evaluation-only
paraphrases and sentence completions of the built-in world (QA alone overstates forgetting:
a model can refuse the question format and still complete the sentence).
"""

from __future__ import annotations

from .qa import EvalSuite, QAScores

HEADLINE = {"forget": "forget_acc", "forget_heldout": "forget_heldout_acc",
            "retain": "retain_acc", "unrelated": "unrelated_acc"}


def summarise(scores: dict[str, QAScores]) -> dict:
    """Turn per-set scores into the headline accuracies plus a per-set table."""
    out: dict = {key: (scores[name].accuracy if name in scores else None) for name, key in HEADLINE.items()}
    out["sets"] = {name: {"acc": s.accuracy, "nll": s.mean_nll, "n": len(s.correct)}
                   for name, s in scores.items()}
    return out


def evaluate(subject, target, suite: EvalSuite | None = None) -> dict:
    """Accuracy and NLL of ``subject`` on every QA set of ``target`` (see module docstring).

    Pass a prebuilt ``suite`` (``EvalSuite(subject, target.eval_sets())``) to avoid re-encoding
    when evaluating many models that share a tokenizer.
    """
    suite = suite or EvalSuite(subject, target.eval_sets())
    return summarise(suite.run(subject))
