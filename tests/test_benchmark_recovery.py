"""Recovery and residual on a chosen metric (metrics/itemwise.py), on benchmark targets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from unlearn_audit.data.target import load_target
from unlearn_audit.errors import UserInputError
from unlearn_audit.metrics import mc, tofu
from unlearn_audit.metrics.itemwise import ItemScorer
from unlearn_audit.metrics.qa import EvalSuite

FIX = Path(__file__).parent / "fixtures" / "benchmarks"


@pytest.fixture(scope="module")
def tofu_target():
    return load_target(f"tofu:forget01@{FIX / 'tofu'}")


def test_item_scores_equal_the_metrics_they_name(micro, tofu_target):
    full, _ = micro
    sets = {"forget_heldout": tofu_target.forget_heldout_qa[:4], "unrelated": tofu_target.unrelated_qa[:3]}
    suite = EvalSuite(full, sets)
    scores = suite.run(full)
    prob = ItemScorer(suite, tofu_target, "answer_prob")(full)
    assert np.allclose(prob["forget_heldout"], np.exp(-scores["forget_heldout"].nll.numpy()))
    tr = ItemScorer(suite, tofu_target, "truth_ratio", required=("forget_heldout",))(full)
    rows = {t.question: t for t in tofu_target.benchmark.truth["forget"]}
    items = [rows[q.question] for q in sets["forget_heldout"]]
    nll = tofu.item_nlls(full, items)
    want = np.maximum(0, 1 - tofu.truth_ratios(nll["paraphrased"], nll["perturbed"]))
    assert np.allclose(tr["forget_heldout"], want)
    assert len(tr["unrelated"]) == 3  # real authors / world facts have their own perturbed rows
    em = ItemScorer(suite, tofu_target, "exact_match")(full)
    assert np.array_equal(em["forget_heldout"], scores["forget_heldout"].correct.numpy().astype(float))


def test_mc_item_scores(micro):
    full, _ = micro
    t = load_target(f"wmdp:bio@{FIX / 'wmdp'}")
    suite = EvalSuite(full, {"forget_heldout": t.forget_heldout_qa})
    got = ItemScorer(suite, t, "mc_accuracy", required=("forget_heldout",))(full)["forget_heldout"]
    rows = {m.question.strip(): m for m in t.benchmark.mc}
    items = [rows[q.question] for q in t.forget_heldout_qa]
    assert np.array_equal(got, np.array(mc.mc_accuracy(full, items, t.benchmark.mc_description)["correct"], float))


def test_metric_needing_benchmark_rows_says_so(micro, micro_target):
    full, _ = micro
    suite = EvalSuite(full, {"forget_heldout": micro_target.forget_heldout_qa[:2]})
    with pytest.raises(UserInputError, match="needs a wmdp: target"):
        ItemScorer(suite, micro_target, "mc_accuracy", required=("forget_heldout",))
    # a world target is scored as TOFU (perturbed answers: other entities' values)
    assert ItemScorer(suite, micro_target, "truth_ratio", required=("forget_heldout",)).rows["forget_heldout"]
    with pytest.raises(UserInputError, match="unknown metric 'bleu'"):
        ItemScorer(suite, micro_target, "bleu")


@pytest.mark.slow
def test_rtt_with_rouge_l_on_tofu_is_finite(micro, tofu_target):
    """The original learns the TOFU fixture (a few steps); the micro organism, which never saw
    it, plays a perfectly unlearned model; RTT then relearns half the authors."""
    from dataclasses import replace

    from unlearn_audit.attacks import get_attack
    from unlearn_audit.data.encode import encode_qa
    from unlearn_audit.metrics.likelihood import mean_token_nll
    from unlearn_audit.training import TrainConfig, shuffled_minibatches, train

    full, oracle = micro
    small = replace(tofu_target, forget_qa=tofu_target.forget_qa[:8], forget_heldout_qa=tofu_target.forget_heldout_qa[:6],
                    unrelated_qa=tofu_target.unrelated_qa[:2])
    original = full.copy()
    data = encode_qa(original.tokenizer, small.all_forget_qa, original.prompt_template, original.answer_eos)
    train(original.model, lambda b: mean_token_nll(original.model, b),
          shuffled_minibatches(data, 16, 0), TrainConfig(steps=20, lr=3e-3, seed=0))
    spec = get_attack("rtt")
    params = spec.params({"metric": "rouge_l", "steps": [0, 3], "reemergence": False, "bootstrap": 0,
                          "max_new_tokens": 8, "lr": 3e-3})
    out = spec.run(original, {"none": full}, oracle, small, params)["methods"]["none"]
    assert out["metric"] == "rouge_l"
    assert out["recovery"] is not None and math.isfinite(out["recovery"])
    assert out["residual"] is not None and math.isfinite(out["residual"])
    assert 0 <= out["acc_before"] <= 1 and 0 <= out["acc_after"] <= 1


def test_probe_on_tofu_unique_answers_uses_first_tokens(micro, tofu_target):
    from dataclasses import replace

    from unlearn_audit.attacks import get_attack
    from unlearn_audit.attacks.probe import first_token_items

    full, oracle = micro
    # forget answers are sentences, none repeats: whole-answer classes cannot be tested
    small = replace(tofu_target, forget_qa=tofu_target.forget_qa[:12], forget_heldout_qa=tofu_target.forget_heldout_qa[:8])
    spec = get_attack("probe")
    with pytest.raises(UserInputError, match="labels=first_token"):
        spec.run(full, {"none": full}, oracle, small, spec.params({"labels": "answer"}))
    out = spec.run(full, {"none": full}, oracle, small, spec.params({}))
    assert out["baselines"]["original"]["labels"] == "first_token"
    assert out["baselines"]["original"]["test_items"] > 0
    firsts = first_token_items(full, small.forget_heldout_qa)
    tok = full.tokenizer
    q = small.forget_heldout_qa[0]
    p = tok(full.prompt_template.format(question=q.question))["input_ids"]
    whole = tok(full.prompt_template.format(question=q.question) + " " + q.answer)["input_ids"]
    pieces = [tok.decode([t]).strip() for t in whole[len(p):]]
    assert firsts[0].answer == next(x for x in pieces if x)


def test_world_scored_as_tofu(micro, micro_target):
    from unlearn_audit.data.benchmarks.world_truth import tofu_style
    from unlearn_audit.metrics.benchmark import benchmark_scores

    t = tofu_style(micro_target)
    truth = t.benchmark.truth
    assert len(truth["forget"]) == len([q for q in micro_target.all_forget_qa if q.kind == "qa"])
    values = {}
    for q in micro_target.all_forget_qa + micro_target.retain_qa + micro_target.unrelated_qa:
        values.setdefault(q.attribute, set()).add(q.answer)
    by_question = {q.question: q for q in micro_target.all_forget_qa}
    for row in truth["forget"]:
        q = by_question[row.question]
        assert row.paraphrased == row.answer == q.answer
        assert row.answer not in row.perturbed and set(row.perturbed) <= values[q.attribute]  # same attribute, other entities
        assert len(row.perturbed) == min(5, len(values[q.attribute]) - 1)
    assert tofu_style(micro_target).benchmark.truth == truth  # seeded
    full, oracle = micro
    small = type(t)(**{**t.__dict__, "benchmark": type(t.benchmark)("tofu", "world", truth={"forget": truth["forget"]})})
    ref = benchmark_scores(oracle, small, max_new_tokens=2, rouge_stem=False)
    assert benchmark_scores(oracle, small, reference=ref, max_new_tokens=2, rouge_stem=False)["forget_quality"] == 1.0
    # the full model knows the concept, the oracle never saw it: their truth ratios differ in distribution
    assert benchmark_scores(full, small, reference=ref, max_new_tokens=2, rouge_stem=False)["forget_quality"] < 0.05


def test_quantize_on_a_chosen_metric(micro, micro_target):
    """quantize's per-bit scores are the chosen metric's means (computed here with and without
    the quantized weights), and its recovery and residual are the usual ratios of them."""
    from unlearn_audit.attacks import get_attack
    from unlearn_audit.attacks.quantize import quantized
    from unlearn_audit.metrics.recovery import recovery

    full, oracle = micro
    spec = get_attack("quantize")
    params = spec.params({"metric": "answer_prob", "bits": [4]})
    out = spec.run(full, {"none": oracle}, oracle, micro_target, params)
    got = out["methods"]["none"]
    assert got["metric"] == "answer_prob"
    suite = EvalSuite(full, {"forget": micro_target.all_forget_qa})

    def prob(subject):
        return float(np.exp(-suite.run(subject)["forget"].nll.numpy()).mean())

    want_full = prob(oracle)
    with quantized(oracle.model, 4, "bnb"):
        want_4 = prob(oracle)
    assert got["acc"]["full"]["forget"] == pytest.approx(want_full, abs=1e-6)
    assert got["acc"]["int4"]["forget"] == pytest.approx(want_4, abs=1e-6)
    assert 0 < want_full < 1 and want_4 != want_full
    original = prob(full)
    assert got["by_bits"]["int4"]["recovery"] == pytest.approx(recovery(want_4, want_full, original), abs=1e-6)
    assert got["residual"] == pytest.approx(0.0, abs=1e-9)   # the oracle is its own reference
    with pytest.raises(UserInputError, match="needs a wmdp: target"):
        spec.run(full, {"none": oracle}, oracle, micro_target, spec.params({"metric": "mc_accuracy"}))


def test_ablation_on_a_chosen_metric(micro, micro_target):
    from unlearn_audit.attacks import get_attack
    from unlearn_audit.attacks.ablation import ablated_accuracy, directions, source_means

    full, oracle = micro
    spec = get_attack("ablation")
    got = spec.run(full, {"none": oracle}, oracle, micro_target, spec.params({"metric": "answer_prob"}))["methods"]["none"]
    suite = EvalSuite(full, {"forget": micro_target.all_forget_qa})
    scorer = ItemScorer(suite, micro_target, "answer_prob")
    dirs = directions(source_means(full, micro_target.all_forget_qa), oracle)
    assert got["metric"] == "answer_prob"
    assert got["acc_before"] == pytest.approx(float(np.exp(-suite.run(oracle)["forget"].nll.numpy()).mean()), abs=1e-6)
    assert got["acc_after"] == pytest.approx(ablated_accuracy(oracle, suite, dirs, scorer), abs=1e-6)
    assert got["acc_after"] != got["acc_before"]


def test_evaluations_carry_tofu_truth_ratio_and_forget_quality_on_a_world_target(micro, micro_target):
    from unlearn_audit.api import Evaluator
    from unlearn_audit.data.benchmarks.world_truth import tofu_style
    from unlearn_audit.metrics.tofu import add_forget_quality, forget_quality, tofu_scores
    from unlearn_audit.report.tables import summary_rows

    full, oracle = micro
    evaluator = Evaluator(full, micro_target, agreement=False)
    original, orc = evaluator(full), evaluator(oracle)
    add_forget_quality([original, orc], orc)
    reference = tofu_scores(full, tofu_style(micro_target), max_new_tokens=1)
    assert np.allclose(original["tofu"]["forget_truth_ratios"], reference["forget_truth_ratios"])
    assert original["tofu"]["forget_truth_ratio"] == pytest.approx(reference["sets"]["forget"]["truth_ratio"])
    assert orc["tofu"]["forget_quality"] == 1.0
    assert original["tofu"]["forget_quality"] == pytest.approx(
        forget_quality(original["tofu"]["forget_truth_ratios"], orc["tofu"]["forget_truth_ratios"]))
    assert original["tofu"]["forget_quality"] < 0.05       # the full model knows the concept the oracle never saw
    add_forget_quality([original], None)
    assert original["tofu"]["forget_quality"] is None      # no oracle, no forget quality
    doc = {"original": original, "oracle": None, "methods": {}, "baselines": {}, "declarations": {}}
    cols, rows = summary_rows(doc, [])
    assert cols[6:8] == ["truth ratio", "forget quality"]
    assert rows[0][6] == original["tofu"]["forget_truth_ratio"]


def test_in_context_on_answer_probability(micro, micro_target):
    from unlearn_audit.attacks import get_attack

    full, oracle = micro
    spec = get_attack("in_context")
    params = spec.params({"metric": "answer_prob", "shots": [0, 2], "draws": 1, "variants": ["heldout"]})
    out = spec.run(full, {"none": oracle}, oracle, micro_target, params)
    got = out["methods"]["none"]
    heldout = [q for q in micro_target.forget_heldout_qa if q.kind == "qa"]
    suite = EvalSuite(full, {"heldout": heldout})
    for subject, curve in ((oracle, got["curves"]), (full, out["baselines"]["original"])):
        want = float(np.exp(-suite.run(subject)["heldout"].nll.numpy()).mean())
        assert curve["heldout"]["acc"][0] == pytest.approx(want, rel=1e-4)
    assert got["metric"] == "answer_prob" and 0 < got["curves"]["heldout"]["acc"][1] < 1
    with pytest.raises(UserInputError, match="metric"):
        spec.params({"metric": "rouge_l"})
