"""How much an attack brings back, against the original model and the oracle.

- Recovery (on the forget set):
  ``(attacked - unlearned) / (original - unlearned)``: 0 = the attack brought nothing back,
  1 = back to the original model's accuracy. Undefined (None) when unlearning changed nothing
  (``original == unlearned``).
- Residual knowledge (needs an oracle, i.e. a model that never knew the concept):
  ``(attacked_unlearned - attacked_oracle) / (original - oracle_before)``: what the attack
  recovers beyond what the same attack teaches a model that never knew the concept.
  0 = as good as exact unlearning, 1 = nothing was removed.

All accuracies are on the same evaluation set; "original", "unlearned" and "oracle_before" are
before the attack. Bootstrap intervals resample the evaluation items (paired across models).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

EPS = 1e-9


def recovery(attacked: float, unlearned: float, original: float) -> float | None:
    denominator = original - unlearned
    if not all(map(math.isfinite, (attacked, unlearned, original))) or abs(denominator) <= EPS:
        return None
    return (attacked - unlearned) / denominator


def residual(attacked_unlearned: float, attacked_oracle: float, original: float,
             oracle_before: float) -> float | None:
    denominator = original - oracle_before
    values = (attacked_unlearned, attacked_oracle, original, oracle_before)
    if not all(map(math.isfinite, values)) or abs(denominator) <= EPS:
        return None
    return (attacked_unlearned - attacked_oracle) / denominator


def steps_to_fraction(steps: Sequence[int], accuracies: Sequence[float], level: float) -> int | None:
    """First checkpoint step at which accuracy reaches ``level`` (None if never)."""
    for s, a in zip(steps, accuracies, strict=True):
        if a >= level - EPS:
            return int(s)
    return None


def curve_auc(steps: Sequence[int], values: Sequence[float | None]) -> float | None:
    """Trapezoidal area under ``values(step)`` divided by the step range: the mean value over
    the run (so a recovery curve's AUC is in the same units as recovery)."""
    if any(v is None for v in values) or len(steps) < 2 or steps[-1] == steps[0]:
        return None
    x, y = np.asarray(steps, float), np.asarray(values, float)
    return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum() / (x[-1] - x[0]))


def bootstrap_intervals(attacked: np.ndarray, unlearned: np.ndarray, original: np.ndarray,
                        attacked_oracle: np.ndarray | None = None, oracle_before: np.ndarray | None = None,
                        n: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals of recovery and residual over evaluation items.

    Each array holds per-item correctness (or its mean over relearning seeds) on the same
    items, in the same order. Resamples whose denominator vanishes are dropped.
    """
    rng = np.random.default_rng(seed)
    m = len(attacked)
    idx = rng.integers(0, m, size=(n, m))

    def interval(num: np.ndarray, den: np.ndarray) -> list[float] | None:
        ok = np.abs(den) > EPS
        if ok.sum() < n // 2:
            return None
        ratio = num[ok] / den[ok]
        tail = (1 - level) / 2 * 100
        return [float(np.percentile(ratio, tail)), float(np.percentile(ratio, 100 - tail))]

    mean = lambda a: a[idx].mean(1)  # noqa: E731  (B,) resampled means
    out = {"recovery": interval(mean(attacked) - mean(unlearned), mean(original) - mean(unlearned)),
           "residual": None}
    if attacked_oracle is not None and oracle_before is not None:
        out["residual"] = interval(mean(attacked) - mean(attacked_oracle), mean(original) - mean(oracle_before))
    return out
