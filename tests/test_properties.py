"""Property tests (hypothesis) where inputs are cheap: no model is loaded.

- the recovery/residual algebra of :mod:`unlearn_audit.metrics.recovery` (its docstring's
  formulas), the curve AUC and the first-step-to-a-level;
- the bootstrap intervals: ordered, nested across levels, exact at the two ends of the scale,
  None when every denominator vanishes;
- validation: every bounded numeric parameter of every registered method and attack refuses a
  value outside its bounds (and NaN/inf) with a one-line UserInputError naming it, and accepts
  its bounds; an experiment refuses seeds outside the seed range.

Deterministic (``derandomize=True``) and small, so the suite stays fast.
"""

from __future__ import annotations

import math

import annotated_types as at
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from unlearn_audit.errors import UserInputError
from unlearn_audit.metrics.recovery import (
    EPS,
    bootstrap_intervals,
    curve_auc,
    recovery,
    residual,
    steps_to_fraction,
)
from unlearn_audit.params import MAX_SEED

FAST = settings(derandomize=True, max_examples=60, deadline=None)
acc = st.floats(0.0, 1.0, allow_nan=False)                     # an accuracy
apart = lambda a, b: abs(a - b) > 1e-3                         # noqa: E731  a denominator well away from 0


# ----------------------------------------------------------------------------- recovery / residual

@FAST
@given(acc, acc)
def test_recovery_is_zero_unchanged_and_one_back_at_the_original(unlearned, original):
    assume(apart(original, unlearned))
    assert recovery(unlearned, unlearned, original) == 0.0
    assert recovery(original, unlearned, original) == pytest.approx(1.0)


@FAST
@given(acc, acc)
def test_recovery_is_none_when_unlearning_changed_nothing(attacked, original):
    assert recovery(attacked, original, original) is None
    assert recovery(attacked, original + EPS / 2, original) is None          # within EPS counts as equal


@FAST
@given(acc, acc, acc, acc)
def test_recovery_is_monotonic_in_the_attacked_accuracy_and_inverts(a1, a2, unlearned, original):
    assume(apart(original, unlearned))
    lo, hi = sorted((a1, a2))
    r_lo, r_hi = recovery(lo, unlearned, original), recovery(hi, unlearned, original)
    # increasing when unlearning lowered accuracy, decreasing when it raised it
    assert (r_lo <= r_hi) if original > unlearned else (r_lo >= r_hi)
    # the formula inverts: attacked = unlearned + recovery * (original - unlearned)
    assert unlearned + r_hi * (original - unlearned) == pytest.approx(hi, abs=1e-9)


@FAST
@given(st.sampled_from([math.nan, math.inf, -math.inf]), acc, acc, st.integers(0, 2))
def test_non_finite_inputs_give_none_not_nan(bad, x, y, where):
    args = [x, y, 1.0 - y]
    args[where] = bad
    assert recovery(*args) is None
    assert residual(*args, 0.5) is None and residual(x, y, 1.0, bad) is None


@FAST
@given(acc, acc, acc, acc)
def test_residual_algebra(a_unlearned, a_oracle, original, oracle_before):
    assume(apart(original, oracle_before))
    # as good as exact unlearning: the unlearned model relearns what the oracle relearns
    assert residual(a_oracle, a_oracle, original, oracle_before) == 0.0
    # nothing removed: attacked unlearned at the original, attacked oracle where it started
    assert residual(original, oracle_before, original, oracle_before) == pytest.approx(1.0)
    r = residual(a_unlearned, a_oracle, original, oracle_before)
    assert r == pytest.approx(-residual(a_oracle, a_unlearned, original, oracle_before))
    assert r == pytest.approx((a_unlearned - a_oracle) / (original - oracle_before))
    assert residual(a_unlearned, a_oracle, original, original) is None          # no oracle gap: undefined


# ----------------------------------------------------------------------------- curves

steps_strategy = st.lists(st.integers(0, 1000), min_size=2, max_size=8, unique=True).map(sorted)


@FAST
@given(steps_strategy, st.data())
def test_curve_auc_is_a_mean_between_the_extremes(steps, data):
    values = data.draw(st.lists(st.floats(-2, 2), min_size=len(steps), max_size=len(steps)))
    auc = curve_auc(steps, values)
    assert min(values) - 1e-9 <= auc <= max(values) + 1e-9
    # the trapezoid rule, written out: unevenly spaced checkpoints weigh by their spacing
    area = sum((values[i] + values[i + 1]) / 2 * (steps[i + 1] - steps[i]) for i in range(len(steps) - 1))
    assert auc == pytest.approx(area / (steps[-1] - steps[0]), abs=1e-9)
    assert curve_auc(steps, [values[0]] * len(steps)) == pytest.approx(values[0])
    assert curve_auc(steps, [*values[:-1], None]) is None
    assert curve_auc(steps[:1], values[:1]) is None


@FAST
@given(steps_strategy, st.data(), acc)
def test_steps_to_fraction_is_the_first_step_at_the_level(steps, data, level):
    accuracies = data.draw(st.lists(acc, min_size=len(steps), max_size=len(steps)))
    found = steps_to_fraction(steps, accuracies, level)
    reached = [s for s, a in zip(steps, accuracies, strict=True) if a >= level - EPS]
    assert found == (reached[0] if reached else None)


# ----------------------------------------------------------------------------- bootstrap intervals

def items(n_min=4, n_max=30):
    """Per-item correctness of the four models on the same items."""
    return st.integers(n_min, n_max).flatmap(lambda n: st.tuples(
        *[st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n).map(np.array) for _ in range(4)]))


@FAST
@given(items(), st.integers(0, 2**16))
def test_intervals_are_ordered_nested_and_reproducible(arrays, seed):
    attacked, unlearned, original, oracle = arrays
    wide = bootstrap_intervals(attacked, unlearned, original, attacked, oracle, n=200, seed=seed, level=0.95)
    narrow = bootstrap_intervals(attacked, unlearned, original, attacked, oracle, n=200, seed=seed, level=0.5)
    assert wide == bootstrap_intervals(attacked, unlearned, original, attacked, oracle, n=200, seed=seed)
    for key in ("recovery", "residual"):
        if wide[key] is None:
            assert narrow[key] is None                          # the same resamples are kept or dropped
            continue
        (lo, hi), (nlo, nhi) = wide[key], narrow[key]
        assert lo <= nlo <= nhi <= hi, key                      # one resample set: percentiles nest
    # attacked == its own oracle row here: every resample's residual numerator is 0
    assert wide["residual"] in (None, [0.0, 0.0])


@FAST
@given(items(), st.integers(0, 2**16))
def test_intervals_at_the_ends_of_the_scale(arrays, seed):
    _, unlearned, original, _ = arrays
    assume(bool((original != unlearned).any()))
    ones = bootstrap_intervals(original, unlearned, original, n=200, seed=seed)
    zeros = bootstrap_intervals(unlearned, unlearned, original, n=200, seed=seed)
    assert ones["residual"] is None and zeros["residual"] is None          # no oracle given
    if ones["recovery"] is not None:                                        # enough resamples kept
        assert ones["recovery"] == pytest.approx([1.0, 1.0]) and zeros["recovery"] == [0.0, 0.0]
    # nothing unlearned at all: every denominator is 0, so no interval
    assert bootstrap_intervals(original, original, original, n=200, seed=seed)["recovery"] is None


@FAST
@given(st.integers(4, 30).flatmap(lambda n: st.lists(st.tuples(st.integers(0, 1), st.integers(0, 2)), min_size=n,
                                                     max_size=n)), st.integers(0, 2**16))
def test_recovery_interval_stays_in_zero_one_when_items_only_come_back(rows, seed):
    """Unlearned below original on every item, attacked between them: each resample's recovery
    is in [0, 1], so is its interval (and the point estimate lies in it, up to resampling)."""
    unlearned = np.zeros(len(rows))
    original = np.array([1.0 if d else 0.0 for d, _ in rows])                # forgotten items
    attacked = np.array([o * (k > 0) for o, k in zip(original, (k for _, k in rows), strict=True)])
    assume(original.sum() > len(rows) / 2)
    ci = bootstrap_intervals(attacked, unlearned, original, n=300, seed=seed)["recovery"]
    assert ci is not None and 0.0 <= ci[0] <= ci[1] <= 1.0


# ----------------------------------------------------------------------------- validation

def _bounded_fields():
    """(owner, params class, field, bound kind, bound) for every int/float field with a bound."""
    from unlearn_audit.attacks import attack_names, get_attack
    from unlearn_audit.methods import get_method, method_names

    owners = [(f"method {n!r}", get_method(n).Params, get_method(n).params) for n in method_names()] + \
             [(f"attack {n!r}", get_attack(n).Params, get_attack(n).params) for n in attack_names()]
    out = []
    for owner, cls, validate in owners:
        for name, info in cls.model_fields.items():
            kind = {int: "int", float: "float", int | None: "int", float | None: "float"}.get(info.annotation)
            for m in info.metadata if kind else []:
                for attr in ("ge", "gt", "le", "lt"):
                    if isinstance(m, getattr(at, attr.capitalize())):
                        out.append((owner, validate, name, kind, attr, getattr(m, attr)))
    return out


BOUNDED = _bounded_fields()


def test_there_are_bounded_parameters_to_check():
    assert len(BOUNDED) > 40 and {b[2] for b in BOUNDED} >= {"steps", "lr", "seed", "batch_size"}


@settings(derandomize=True, max_examples=150, deadline=None)
@given(st.sampled_from(BOUNDED), st.floats(0, 1e6, allow_nan=False), st.booleans())
def test_every_bounded_parameter_refuses_values_past_its_bound(bounded, distance, integral):
    owner, validate, name, kind, attr, bound = bounded
    step = 1 if kind == "int" else max(1e-9, abs(bound) * 1e-9)
    outward = -1 if attr in ("ge", "gt") else 1
    offset = max(step, math.ceil(distance) if kind == "int" or integral else distance)
    if attr in ("gt", "lt"):
        offset = offset if distance else 0  # the bound itself is outside a strict bound
    bad = bound + outward * offset
    bad = int(bad) if kind == "int" else float(bad)
    with pytest.raises(UserInputError, match=rf"{owner} parameter '{name}'"):
        validate({name: bad})
    if attr in ("ge", "le"):  # an inclusive bound is a valid value
        assert getattr(validate({name: bound}), name) == bound


@FAST
@given(st.sampled_from([b for b in BOUNDED if b[3] == "float"]), st.sampled_from([math.nan, math.inf, -math.inf]))
def test_float_parameters_refuse_nan_and_infinity(bounded, bad):
    owner, validate, name, *_ = bounded
    with pytest.raises(UserInputError, match=rf"{owner} parameter '{name}'"):
        validate({name: bad})


@FAST
@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=MAX_SEED + 1)), st.integers(0, MAX_SEED))
def test_experiment_seeds_outside_the_seed_range_are_refused(bad, good):
    from unlearn_audit.experiment.config import parse_experiment

    assert parse_experiment({"methods": {"none": {}}, "seeds": [good]}).seeds == [good]
    with pytest.raises(UserInputError, match="seeds.0"):
        parse_experiment({"methods": {"none": {}}, "seeds": [bad]})
