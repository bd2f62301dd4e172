"""Perplexity of text: exp(total NLL / total scored tokens), batched."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..data.encode import encode_texts
from .likelihood import eval_mode, forward_logits, token_logprobs


@torch.no_grad()
def perplexity(subject, texts: Sequence[str], batch_size: int = 64, max_length: int = 256) -> float:
    """Token-level perplexity of ``texts`` (each scored from its first token after BOS)."""
    if not texts:
        return float("nan")
    encoded = encode_texts(subject.tokenizer, texts, max_length)
    model = subject.model
    total, count = 0.0, 0
    with eval_mode(model):
        for i in range(0, len(texts), batch_size):
            batch = {k: v[i:i + batch_size].to(subject.device) for k, v in encoded.items()}
            logp, mask = token_logprobs(forward_logits(model, batch), batch["labels"])
            total -= float(logp.sum())
            count += int(mask.sum())
    return math.exp(total / max(count, 1))
