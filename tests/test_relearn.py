import json
import math

import pytest
import torch

from unlearn_audit.api import audit, unlearn
from unlearn_audit.metrics.generation import generate_answers

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


def test_results_have_the_documented_keys(audited):
    results = audited[0]
    assert {"subject", "concept", "original", "oracle", "methods", "timings_s"} <= set(results)
    for block in [results["original"], results["oracle"], *results["methods"].values()]:
        for key in ("forget_acc", "forget_heldout_acc", "retain_acc", "unrelated_acc"):
            assert 0.0 <= block[key] <= 1.0
    for m in results["methods"].values():
        assert set(m["attacks"]) == {"rtt", "forget_data", "unrelated"}
        for r in m["attacks"].values():
            assert "recovery" in r and "residual" in r
    json.dumps(results)  # serialisable as is


def test_recovery_is_zero_at_step_zero(audited):
    for r in audited[0]["methods"]["gradient_ascent"]["attacks"].values():
        assert r["curve"]["steps"][0] == 0
        assert r["curve"]["recovery"][0] == 0.0


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
