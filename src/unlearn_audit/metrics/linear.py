"""Small L2-regularised linear classifiers fitted by L-BFGS in torch (no scikit-learn).

- :func:`fit_logistic`: binary logistic regression (ECO's prompt classifier);
- :func:`fit_probe`: multinomial logistic regression on standardised features (the linear
  probes of :mod:`unlearn_audit.attacks.probe`).

Both minimise the mean cross-entropy plus ``l2 * ||W||^2`` (the bias is not penalised),
starting from zeros, so a fit is deterministic on a given machine. The solves are tiny (a few
hundred rows), so they run on one CPU thread: intra-op threads only add synchronisation, which
on a busy machine costs seconds per fit instead of milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, steps: int = 200) -> tuple[torch.Tensor, float]:
    """Binary logistic regression on raw inputs ``x (N, d)``, labels ``y (N,)`` in {0, 1};
    returns ``(w (d,), b)``."""
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    _minimise(lambda: F.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w * w).sum(), [w, b], steps)
    return w.detach(), float(b.detach())


def _minimise(loss_fn, params: list[torch.Tensor], steps: int) -> None:
    """Minimise the convex ``loss_fn()`` over ``params`` in place: L-BFGS with a strong-Wolfe
    line search, on one thread (see :func:`_one_thread`)."""
    opt = torch.optim.LBFGS(params, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    with torch.enable_grad(), _one_thread():
        opt.step(closure)


@dataclass(frozen=True)
class LinearProbe:
    """``logits = ((x - mean) / scale) @ weight + bias``."""

    weight: torch.Tensor  # (d, C)
    bias: torch.Tensor    # (C,)
    mean: torch.Tensor    # (d,)
    scale: torch.Tensor   # (d,)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - self.mean) / self.scale) @ self.weight + self.bias   # (N, C)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(-1)                                         # (N,)


def fit_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float = 1e-2,
              steps: int = 100) -> LinearProbe:
    """Multinomial logistic regression of labels ``y (N,)`` in ``[0, n_classes)`` on features
    ``x (N, d)``, each feature standardised with the training mean and standard deviation.

    Loss: ``mean_i CE(softmax(W^T z_i + b), y_i) + l2 * ||W||_F^2`` with ``z`` the standardised
    features.
    """
    x = x.float()
    mean = x.mean(0)
    scale = x.std(0, unbiased=False).clamp(min=1e-6)
    z = (x - mean) / scale                                                       # (N, d)
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    _minimise(lambda: F.cross_entropy(z @ w + b, y) + l2 * (w * w).sum(), [w, b], steps)
    return LinearProbe(w.detach(), b.detach(), mean, scale)
