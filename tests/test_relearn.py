import json
import math

import numpy as np
import pytest
import torch

from unlearn_audit.api import audit, unlearn
from unlearn_audit.metrics import EvalSuite
from unlearn_audit.metrics.behaviour import summarise
from unlearn_audit.metrics.generation import generate_answers
from unlearn_audit.metrics.recovery import recovery, residual

FAST = {"checkpoints": [0, 5, 20], "bootstrap": 200}


@pytest.fixture(scope="module")
def audited(micro, micro_target):
    full, oracle = micro
    unlearned = {"none": unlearn(full, micro_target, "none"),
                 "gradient_ascent": unlearn(full, micro_target, "gradient_ascent", steps=30, lr=1e-4)}
    snapshot = {k: v.clone() for k, v in unlearned["gradient_ascent"].model.state_dict().items()}
    params = {a: FAST for a in ("rtt", "forget_data", "unrelated")}
    results = audit(full, unlearned, micro_target, attacks=list(params), oracle=oracle, attack_params=params)
    return results, unlearned, snapshot, params


def test_accuracies_are_the_evaluation_suites(audited, micro, micro_target):
    """Every model's accuracies are what an evaluation suite built here says; ``none`` scores
    exactly the original, gradient ascent less on the forget set."""
    results, unlearned = audited[0], audited[1]
    assert {"subject", "concept", "original", "oracle", "methods", "timings_s"} <= set(results)
    suite = EvalSuite(micro[0], micro_target.eval_sets())
    keys = ("forget_acc", "forget_heldout_acc", "retain_acc", "unrelated_acc")
    for block, subject in ((results["original"], micro[0]), (results["oracle"], micro[1]),
                           (results["methods"]["none"], unlearned["none"]),
                           (results["methods"]["gradient_ascent"], unlearned["gradient_ascent"])):
        expected = summarise(suite.run(subject))
        assert {k: block[k] for k in keys} == pytest.approx({k: expected[k] for k in keys})
    assert {k: results["methods"]["none"][k] for k in keys} == {k: results["original"][k] for k in keys}
    assert results["methods"]["gradient_ascent"]["forget_acc"] < results["original"]["forget_acc"]
    for m in results["methods"].values():
        assert set(m["attacks"]) == {"rtt", "forget_data", "unrelated"}
    json.dumps(results, allow_nan=False)  # serialisable as is, no NaN


def _approx_or_none(values):
    return [None if v is None else pytest.approx(v) for v in values]


def test_recovery_and_residual_recomputed_from_the_curves(audited):
    """Each attack's recovery and residual, at every checkpoint and as AUC, recomputed from the
    curves in the document (the model's and the baselines') with metrics.recovery and a
    hand-written trapezoid."""
    results = audited[0]
    for attack in ("rtt", "forget_data", "unrelated"):
        base = results["baselines"][attack]
        orig0, oracle = base["original"]["acc"][0], base["oracle"]["acc"]
        for name, m in results["methods"].items():
            r = m["attacks"][attack]
            steps, acc = r["curve"]["steps"], r["curve"]["acc"]
            assert (r["acc_before"], r["acc_after"]) == (acc[0], acc[-1])
            rec = [recovery(a, acc[0], orig0) for a in acc]
            res = [residual(a, o, orig0, oracle[0]) for a, o in zip(acc, oracle, strict=True)]
            assert r["curve"]["recovery"] == _approx_or_none(rec), (attack, name)
            assert r["curve"]["residual"] == _approx_or_none(res), (attack, name)
            assert [r["recovery"], r["residual"]] == _approx_or_none([rec[-1], res[-1]])
            for key, ys in (("recovery_auc", rec), ("residual_auc", res)):
                if None in ys:
                    assert r[key] is None
                else:
                    area = sum((ys[i] + ys[i + 1]) / 2 * (steps[i + 1] - steps[i]) for i in range(len(ys) - 1))
                    assert r[key] == pytest.approx(area / (steps[-1] - steps[0])), (attack, name, key)
        # ``none`` is the original's weights: its relearning curve is the original's, step by step
        assert results["methods"]["none"]["attacks"][attack]["curve"]["acc"] == base["original"]["acc"], attack


def test_the_curve_starts_at_the_unlearned_models_accuracy(audited, micro, micro_target):
    """Step 0 of each relearning curve is the unlearned model before any training, scored here by
    an evaluation suite of the attack's own sets; relearning then brings the forget set back."""
    results, unlearned = audited[0], audited[1]
    sets = micro_target.eval_sets()
    for attack in ("rtt", "forget_data", "unrelated"):
        r = results["methods"]["gradient_ascent"]["attacks"][attack]
        assert r["curve"]["steps"] == FAST["checkpoints"]
        scores = EvalSuite(micro[0], {k: sets[k] for k in r["eval_sets"]}).run(unlearned["gradient_ascent"])
        correct = np.concatenate([np.asarray(scores[k].correct, dtype=float) for k in r["eval_sets"]])
        assert r["acc_before"] == pytest.approx(float(correct.mean())), attack
        assert r["curve"]["recovery"][0] == 0.0
    for attack in ("rtt", "forget_data"):  # training on the concept's own data relearns it
        r = results["methods"]["gradient_ascent"]["attacks"][attack]
        assert r["acc_after"] > r["acc_before"] and r["recovery"] > 0, attack


def test_none_has_null_recovery_not_nan(audited):
    for r in audited[0]["methods"]["none"]["attacks"].values():
        assert r["recovery"] is None and r["recovery_ci"] is None
        assert r["residual"] is not None and math.isfinite(r["residual"])


def test_residual_matches_its_definition(audited):
    results = audited[0]
    r = results["methods"]["gradient_ascent"]["attacks"]["rtt"]
    base = results["baselines"]["rtt"]
    orig0, oracle0 = base["original"]["acc"][0], base["oracle"]["acc"][0]
    expected = (r["acc_after"] - base["oracle"]["acc"][-1]) / (orig0 - oracle0)
    assert r["residual"] == pytest.approx(expected)
    assert r["recovery"] == pytest.approx((r["acc_after"] - r["acc_before"]) / (orig0 - r["acc_before"]))
    lo, hi = r["recovery_ci"]
    assert lo <= r["recovery"] <= hi


def test_unlearned_relearns_faster_than_the_oracle(audited):
    rtt = audited[0]["methods"]["gradient_ascent"]["attacks"]["rtt"]
    assert rtt["acc_after"] > rtt["oracle_acc_after"] + 0.1


def test_audits_never_mutate_subjects(audited):
    _, unlearned, snapshot, _ = audited
    for k, v in unlearned["gradient_ascent"].model.state_dict().items():
        assert torch.equal(v, snapshot[k])


def test_same_seed_same_results(audited, micro, micro_target):
    results, unlearned, _, params = audited
    again = audit(micro[0], {"gradient_ascent": unlearned["gradient_ascent"]}, micro_target,
                  attacks=["rtt"], oracle=micro[1], attack_params=params)
    a = results["methods"]["gradient_ascent"]["attacks"]["rtt"]
    b = again["methods"]["gradient_ascent"]["attacks"]["rtt"]
    assert a["curve"] == b["curve"] and a["recovery_ci"] == b["recovery_ci"]


def test_without_oracle_residual_is_null(micro, micro_target, audited):
    _, unlearned, _, params = audited
    r = audit(micro[0], {"ga": unlearned["gradient_ascent"]}, micro_target, attacks=["rtt"],
              attack_params=params)
    assert r["oracle"] is None
    rtt = r["methods"]["ga"]["attacks"]["rtt"]
    assert rtt["residual"] is None and rtt["recovery"] is not None


def test_batched_generation_equals_one_by_one(micro, micro_target):
    items = micro_target.forget_qa[:6] + micro_target.extra_eval["forget_completion"][:4]
    batched = generate_answers(micro[0], items, batch_size=16)
    single = [generate_answers(micro[0], [q])[0] for q in items]
    assert batched == single
    assert sum(a == q.answer for a, q in zip(batched, items, strict=True)) >= 8
