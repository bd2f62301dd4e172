"""DP-SGD: per-example gradient clipping and Gaussian noise, with Rényi-DP accounting.

Abadi et al. 2016 ("Deep Learning with Differential Privacy"), as Opacus implements it: each
step draws a Poisson sample of the examples (each one independently with probability q), and
the gradient the optimiser sees is

    g = (sum_i clip_C(g_i) + N(0, sigma^2 C^2 I)) / B,    clip_C(g) = g * min(1, C / (||g|| + 1e-6))

with g_i the gradient of example i's loss (all parameters together, one norm), C the clipping
norm, sigma the noise multiplier and B = q N the *expected* batch size (not the drawn one, whose
size would itself leak). The privacy spent by T such steps is Opacus's RDP accountant's
(``opacus.accountants.RDPAccountant``, Mironov 2017 and Mironov, Talwar & Zhang 2019 for the
sampled Gaussian), and the sigma for a target epsilon is Opacus's ``get_noise_multiplier``. The
guarantee is per *example*: here one example is one document, so it is per document; k
documents together get the group bound (k epsilon, k e^{(k-1) epsilon} delta) (Dwork & Roth
2014, Theorem 2.2 generalised; :func:`group_privacy`).

Per-example gradients come from ``torch.func`` (``vmap`` of ``grad`` over ``functional_call``),
in chunks, so memory is ``chunk`` gradients on top of the model. With ``noise_multiplier = 0``
and ``max_grad_norm = None`` the step is ``sum_i g_i / B``: ordinary training of the mean
per-example loss, which the tests check.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import UserInputError

DEFAULT_DELTA = 1e-5


def _opacus() -> None:
    """A one-line error naming the extra when Opacus is missing."""
    try:
        import opacus.accountants  # noqa: F401
    except ImportError:
        raise UserInputError("DP-SGD's privacy accounting needs Opacus: pip install 'unlearn-audit[dp]'") from None


def noise_multiplier_for(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest sigma for which ``steps`` sampled-Gaussian steps at ``sample_rate`` are
    (epsilon, delta)-DP under the RDP accountant (Opacus's search); 0 for epsilon = inf."""
    if math.isinf(epsilon):
        return 0.0
    _opacus()
    from opacus.accountants.utils import get_noise_multiplier

    with _quiet_orders():
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                          steps=steps, accountant="rdp", epsilon_tolerance=0.005))


def epsilon_spent(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` sampled-Gaussian steps (RDP accountant); inf without noise."""
    if noise_multiplier <= 0:
        return math.inf
    if steps == 0:
        return 0.0
    _opacus()
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=orders)
    with _quiet_orders():
        return float(get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])


@contextlib.contextmanager
def _quiet_orders():
    """Opacus warns when the best RDP order is the last of its default ones; the epsilon it
    returns is then a valid, looser bound (more orders would tighten it a little). We keep
    Opacus's orders, so that our epsilon is Opacus's, and silence the warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        yield


def group_privacy(epsilon: float, delta: float, k: int) -> tuple[float, float]:
    """(epsilon, delta)-DP for one example -> the guarantee for a group of ``k`` examples:
    (k epsilon, k e^{(k-1) epsilon} delta), delta capped at 1 (then no guarantee at all)."""
    if math.isinf(epsilon):
        return math.inf, 1.0
    log_delta = math.log(k) + (k - 1) * epsilon + math.log(delta) if delta > 0 else -math.inf
    return k * epsilon, min(1.0, math.exp(min(log_delta, 0.0)))


def poisson_batches(examples: dict[str, torch.Tensor], sample_rate: float, seed: int) -> Iterator[dict]:
    """Endless Poisson samples of the rows of ``examples`` (each row in with probability
    ``sample_rate``, seeded), trimmed to their longest row; a draw may be empty."""
    gen = torch.Generator().manual_seed(seed)
    n = examples["input_ids"].shape[0]
    while True:
        rows = torch.nonzero(torch.rand(n, generator=gen) < sample_rate).flatten()
        batch = {k: v[rows] for k, v in examples.items()}
        width = int(batch["attention_mask"].sum(1).max()) if len(rows) else 1
        yield {k: v[:, :width] for k, v in batch.items()}


@dataclass
class DPSGD:
    """The DP-SGD gradient of one Poisson batch (see the module doc).

    Attributes:
        noise_multiplier: sigma (0: no noise).
        max_grad_norm: C, the per-example clipping norm (None: no clipping; no privacy then).
        expected_batch_size: B = q N, the divisor.
        seed: seeds the noise.
        chunk: examples whose gradients are computed at once.
    """

    noise_multiplier: float
    max_grad_norm: float | None
    expected_batch_size: float
    seed: int = 0
    chunk: int = 64

    def __post_init__(self):
        self._noise = None

    def set_gradients(self, model: torch.nn.Module, params: list[torch.nn.Parameter], batch: dict) -> float:
        """Set ``p.grad`` of every parameter in ``params`` to the DP gradient of ``batch``
        (right-padded ``input_ids`` / ``labels`` with -100 on padding, causal LM loss, mean over
        each example's labelled tokens); returns the batch's mean per-example loss."""
        from torch.func import functional_call, grad_and_value, vmap

        names = {id(p): n for n, p in model.named_parameters()}
        if any(id(p) not in names for p in params):
            raise UserInputError("DP-SGD trains the model's own parameters (not master copies: train it in float32)")
        trained = {names[id(p)]: p.detach() for p in params}
        frozen = {n: p.detach() for n, p in model.named_parameters() if n not in trained}
        frozen.update(dict(model.named_buffers()))

        def loss_one(weights, ids, labels):
            # right padding: the causal mask already keeps real tokens from seeing the pads
            out = functional_call(model, ({**frozen, **weights},), args=(),
                                  kwargs={"input_ids": ids[None], "labels": labels[None], "use_cache": False})
            return out.loss

        per_example = vmap(grad_and_value(loss_one), in_dims=(None, 0, 0), randomness="different")
        total = {n: torch.zeros_like(w) for n, w in trained.items()}
        losses = []
        ids_all, labels_all = batch["input_ids"], batch["labels"]
        # longest first, each chunk cut to its own longest row: a per-example gradient does not
        # depend on its right padding, and one long document no longer widens every chunk
        mask = batch.get("attention_mask")
        lengths = mask.sum(1) if mask is not None else torch.full((ids_all.shape[0],), ids_all.shape[1])
        order = torch.argsort(lengths, descending=True, stable=True)
        ids_all, labels_all, lengths = ids_all[order], labels_all[order], lengths[order]
        device = params[0].device
        for start in range(0, ids_all.shape[0], self.chunk):
            width = int(lengths[start:start + self.chunk].max())
            ids = ids_all[start:start + self.chunk, :width].to(device)
            labels = labels_all[start:start + self.chunk, :width].to(device)
            with warnings.catch_warnings():  # CPU attention has no batching rule: vmap loops it, correctly
                warnings.filterwarnings("ignore", message="There is a performance drop")
                grads, loss = per_example(trained, ids, labels)
            if self.max_grad_norm is not None:
                norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
                factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
            else:
                factor = torch.ones(ids.shape[0], device=device)
            for n, g in grads.items():
                total[n] += torch.einsum("i,i...->...", factor.to(g.dtype), g)
            losses.append(loss.detach())
        if self.noise_multiplier > 0:
            if self.max_grad_norm is None:
                raise UserInputError("DP-SGD noise needs a clipping norm (max_grad_norm)")
            if self._noise is None:
                self._noise = torch.Generator(device=device).manual_seed(self.seed)
            std = self.noise_multiplier * self.max_grad_norm
            for t in total.values():
                t += std * torch.randn(t.shape, generator=self._noise, device=device, dtype=t.dtype)
        for p in params:
            p.grad = total[names[id(p)]] / self.expected_batch_size
        return float(torch.cat(losses).mean()) if losses else 0.0
