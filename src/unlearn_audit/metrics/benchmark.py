"""A benchmark target's own numbers for one model, and the ones that compare it with the oracle.

- ``tofu:``  — per set (forget, retain, real_authors, world_facts) answer probability, ROUGE-L
  recall and truth ratio; model utility; with a reference model, forget quality (:mod:`.tofu`);
- ``wmdp:``  — multiple-choice accuracy (:mod:`.mc`);
- ``world:`` — TOFU's numbers, with other entities' values of the same attribute as the
  perturbed answers (:mod:`unlearn_audit.data.benchmarks.world_truth`);
- ``muse:``  — VerbMem, KnowMem on forget and retain, MUSE's AUC; with a reference model,
  PrivLeak (:mod:`.muse`).

The reference is the oracle (TOFU's retain model, MUSE's retrained model): pass its own
``benchmark_scores`` as ``reference``.
"""

from __future__ import annotations

from ..errors import UserInputError


def benchmark_scores(subject, target, reference: dict | None = None, max_new_tokens: int = 200,
                     rouge_stem: bool | None = None) -> dict:
    """The benchmark numbers of ``subject`` on ``target`` (see the module docstring)."""
    if target.benchmark is None and target.source.get("world"):
        from ..data.benchmarks.world_truth import tofu_style

        target = tofu_style(target)  # the world scored as TOFU: perturbed = other entities' values
    b = target.benchmark
    if b is None:
        raise UserInputError(f"target {target.name!r} is not a benchmark; use tofu:<split>, wmdp:<domain> "
                             "or muse:<corpus>")
    if b.benchmark == "tofu":
        from .tofu import forget_quality, tofu_scores

        out = {"benchmark": "tofu", **tofu_scores(subject, target, max_new_tokens, rouge_stem)}
        if reference is not None:
            out["forget_quality"] = forget_quality(out["forget_truth_ratios"], reference["forget_truth_ratios"])
        return out
    if b.benchmark == "wmdp":
        from .mc import mc_accuracy

        return {"benchmark": "wmdp", "mc_accuracy": mc_accuracy(subject, b.mc, b.mc_description)}
    from .muse import muse_scores, privleak

    out = {"benchmark": "muse", **muse_scores(subject, target)}
    if reference is not None and "auc" in out and "auc" in reference:
        out["privleak"] = privleak(out["auc"], reference["auc"])
    return out


def headline(scores: dict) -> dict[str, float | None]:
    """The few numbers a table shows, by name."""
    if scores["benchmark"] == "tofu":
        s = scores["sets"]
        out = {"forget_truth_ratio": s.get("forget", {}).get("truth_ratio"),
               "forget_rouge_l": s.get("forget", {}).get("rouge_l_recall"),
               "forget_prob": s.get("forget", {}).get("prob"),
               "model_utility": scores.get("model_utility")}
        if "forget_quality" in scores:
            out["forget_quality"] = scores["forget_quality"]
        return out
    if scores["benchmark"] == "wmdp":
        return {"mc_accuracy": scores["mc_accuracy"]["acc"]}
    out = {k: v["rouge_l_f1"] for k, v in scores.items() if isinstance(v, dict) and "rouge_l_f1" in v}
    if "auc" in scores:
        out["auc"] = scores["auc"]
    if "privleak" in scores:
        out["privleak"] = scores["privleak"]
    return out
