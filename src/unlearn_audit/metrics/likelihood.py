"""Token log-probabilities of labelled positions, the quantity every loss and metric uses.

For a batch with ``labels`` (``-100`` = not scored), position ``t`` of the logits predicts
token ``t + 1``. All functions select the scored positions before the softmax, so memory is
O(scored tokens x vocab), not O(batch x length x vocab).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

IGNORE = -100


def forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """The model's output for a batch, the way every scoring, training and hooked pass runs it.

    No labels are passed, so HF computes no loss, and no KV cache is built: nothing here
    generates, and the cache cost 16% of a gradient-ascent step and 15% of an evaluation on
    the reference shape (BENCHMARKS.md).
    """
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)


@contextmanager
def eval_mode(model) -> Iterator[None]:
    """Run ``model`` in eval mode (no dropout) and give it back in the mode it was in, whatever
    happens inside: every scoring and hooked pass reads a model this way, and a training caller
    must get its model back still training."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def forward_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B, T, V)`` logits of a batch (see :func:`forward`)."""
    return forward(model, batch["input_ids"], batch["attention_mask"]).logits


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each labelled next token.

    Args:
        logits: ``(B, T, V)``.
        labels: ``(B, T)`` with ``-100`` where nothing is scored.
    Returns:
        ``logp (B, T-1)`` (0 where not scored) and ``mask (B, T-1)`` (bool).
    """
    target = labels[:, 1:]
    mask = target != IGNORE
    logp = torch.zeros(target.shape, dtype=torch.float32, device=logits.device)
    picked = logits[:, :-1][mask].float()                                  # (N, V)
    logp[mask] = -F.cross_entropy(picked, target[mask], reduction="none")  # (N,)
    return logp, mask


def sequence_logprob(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B,)`` summed log-probability of each row's labelled tokens: log pi(y|x)."""
    logp, _ = token_logprobs(forward_logits(model, batch), batch["labels"])
    return logp.sum(1)


def mean_token_nll(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Scalar mean negative log-likelihood over all labelled tokens of the batch."""
    logp, mask = token_logprobs(forward_logits(model, batch), batch["labels"])
    return -(logp.sum() / mask.sum().clamp(min=1))
