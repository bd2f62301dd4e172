import numpy as np
import pytest

from unlearn_audit.metrics.generation import bleu, rouge_l
from unlearn_audit.metrics.recovery import (
    bootstrap_intervals,
    curve_auc,
    recovery,
    residual,
    steps_to_fraction,
)


def test_recovery_and_residual_by_hand():
    # original 0.9, unlearned 0.1, attacked 0.5 -> (0.5-0.1)/(0.9-0.1) = 0.5
    assert recovery(0.5, 0.1, 0.9) == pytest.approx(0.5)
    assert recovery(0.1, 0.1, 0.9) == 0.0
    # oracle before 0.05, oracle after the same attack 0.25:
    # (0.5 - 0.25) / (0.9 - 0.05) = 0.2941...
    assert residual(0.5, 0.25, 0.9, 0.05) == pytest.approx(0.25 / 0.85)
    assert residual(0.3, 0.3, 0.9, 0.05) == 0.0


def test_undefined_cases_are_none_not_nan():
    assert recovery(1.0, 1.0, 1.0) is None          # nothing was unlearned
    assert recovery(float("nan"), 0.1, 0.9) is None
    assert residual(0.5, 0.5, 0.2, 0.2) is None     # original knew no more than the oracle


def test_steps_and_auc():
    steps, acc = [0, 1, 2, 5, 10], [0.1, 0.2, 0.45, 0.6, 0.9]
    assert steps_to_fraction(steps, acc, 0.45) == 2
    assert steps_to_fraction(steps, acc, 0.95) is None
    # trapezoid of recovery [0, .5, 1] over steps [0, 2, 4] = (0.5*2 + 1.5*2)/2 / 4 = 0.5
    assert curve_auc([0, 2, 4], [0.0, 0.5, 1.0]) == pytest.approx(0.5)
    assert curve_auc([0, 2], [None, 1.0]) is None


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(0)
    n = 200
    original = np.ones(n)
    unlearned = (rng.random(n) < 0.1).astype(float)
    attacked = np.maximum(unlearned, (rng.random(n) < 0.5).astype(float))
    oracle_before = np.zeros(n)
    oracle_after = (rng.random(n) < 0.2).astype(float)
    ci = bootstrap_intervals(attacked, unlearned, original, oracle_after, oracle_before, n=500)
    point = recovery(attacked.mean(), unlearned.mean(), original.mean())
    assert ci["recovery"][0] < point < ci["recovery"][1]
    res = residual(attacked.mean(), oracle_after.mean(), 1.0, 0.0)
    assert ci["residual"][0] < res < ci["residual"][1]
    assert ci["recovery"][1] - ci["recovery"][0] < 0.3
    assert bootstrap_intervals(original, original, original)["recovery"] is None


def test_rouge_l_and_bleu_by_hand():
    assert rouge_l("the red fox", "the red fox") == 1.0
    # LCS("a b c d", "a c e") = 2 -> P = 2/4, R = 2/3, F = 2PR/(P+R) = 4/7
    assert rouge_l("a b c d", "a c e") == pytest.approx(4 / 7)
    assert rouge_l("x", "y") == 0.0
    assert bleu("Drouwick", "drouwick") == 1.0
    assert bleu("x", "y") == 0.0
    # ref "a b", hyp "a c": N = 2; p1 = 1/2, p2 = (0+1)/(1+1) = 1/2 -> sqrt(1/4) = 0.5, no penalty
    assert bleu("a c", "a b") == pytest.approx(0.5)
    # hypothesis shorter than reference: p1 = 1, p2 = (0+1)/(0+1) = 1 (no bigram to match),
    # brevity penalty exp(1 - 2/1)
    assert bleu("a", "a b") == pytest.approx(np.exp(-1))
