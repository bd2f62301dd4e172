"""Quantization: does rounding the weights bring the forgotten knowledge back?

Zhang et al. 2025 ("Catastrophic Failure of LLM Unlearning via Quantization", ICLR 2025) find
that 4-bit post-training quantization of models unlearned with small weight changes restores
much of the "forgotten" knowledge: the unlearning update is smaller than the quantization step,
so the unlearned and the original weights round to the same grid points.

Quantize-dequantize, round-to-nearest (RTN), symmetric, per group: every linear weight inside
the decoder layers (attention and MLP projections; the embeddings and the output head stay in
full precision, as in the paper's RTN/GPTQ/AWQ setting) is cut, along its input dimension, into
groups of ``group_size`` consecutive weights (default 128; the whole row when the row is
shorter). For a group w with b bits, ``q_max = 2^(b-1) - 1`` (127 for int8, 7 for int4):

    scale = max|w| / q_max,     q(w) = clamp(round(w / scale), -q_max, q_max) * scale

so ``|w - q(w)| <= scale / 2`` elementwise. Weights are quantized in place on the subject's own
model and restored bit for bit in ``finally``; the full-precision weights wait off the device
meanwhile (``subject/residency.py``: host memory, or a file), so no copy of the model is made.

Evaluated for the original, the oracle and every unlearned model at each bit width: forget QA
(both halves) and retain QA accuracy (a seeded sample of the retain QA as large as the forget
QA). With acc_b the forget accuracy after b-bit quantization and acc the accuracy in full
precision:

    recovery_b = (acc_b,unlearned - acc_unlearned) / (acc_original - acc_unlearned)
    residual_b = (acc_b,unlearned - acc_b,oracle) / (acc_original - acc_oracle)

and the headline is the attacker's best bit width: ``recovery = max_b recovery_b``,
``residual = max_b residual_b``. Retain accuracy shows whether a bit width still gives a usable
model (on a tiny model, int4 damages everything).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import torch
from pydantic import Field

from ..errors import UserInputError
from ..metrics.qa import EvalSuite
from ..metrics.recovery import recovery, residual
from ..subject import residency
from ..subject.sites import decoder_layers
from .base import Attack, AttackParams, register_attack, sample_items


class QuantizeParams(AttackParams):
    bits: list[Annotated[int, Field(ge=2, le=8)]] = Field([8, 4], min_length=1, description="Bit widths to quantize to (2..8).")
    group_size: int = Field(128, ge=1, description="Weights per quantization group along the input dimension.")


@torch.no_grad()
def quantize_dequantize(weight: torch.Tensor, bits: int, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """RTN symmetric per-group quantize-dequantize of a ``(out, in)`` weight along ``in``.

    Returns ``(dequantized (out, in), scale (out, n_groups))``; the last group of a row is
    shorter when ``in`` is not a multiple of ``group_size``.
    """
    if not 2 <= bits <= 8:
        raise UserInputError(f"quantize: bits must be between 2 and 8, not {bits}")
    q_max = 2 ** (bits - 1) - 1
    w = weight.float()
    out_dim, in_dim = w.shape
    size = min(group_size, in_dim)
    n_groups = -(-in_dim // size)
    padded = torch.nn.functional.pad(w, (0, n_groups * size - in_dim)).view(out_dim, n_groups, size)
    scale = padded.abs().amax(-1, keepdim=True) / q_max                       # (out, G, 1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(padded / safe), -q_max, q_max) * scale        # (out, G, size)
    return q.view(out_dim, -1)[:, :in_dim].to(weight.dtype), scale.squeeze(-1)


def quantizable(model) -> list[tuple[str, torch.nn.Module, bool]]:
    """``(name, module, transposed)`` of every linear layer of the decoder blocks; GPT-2's
    ``Conv1D`` stores its weight as (in, out), hence ``transposed``."""
    out = []
    for i, layer in enumerate(decoder_layers(model)):
        for name, mod in layer.named_modules():
            if isinstance(mod, torch.nn.Linear):
                out.append((f"{i}.{name}", mod, False))
            elif type(mod).__name__ == "Conv1D" and getattr(mod, "weight", None) is not None:
                out.append((f"{i}.{name}", mod, True))
    return out


@contextmanager
def quantized(model, bits: int, group_size: int = 128) -> Iterator[int]:
    """Run ``model`` with its decoder linear weights quantize-dequantized; restored on exit.
    Yields the number of weight matrices quantized."""
    mods = quantizable(model)
    if not mods:
        raise UserInputError(f"quantize: {type(model).__name__} has no linear layers in its decoder blocks")
    # the full-precision weights wait where offloaded weights go (host memory, or a file), not
    # beside the model on its device; each comes back alone
    saved = residency.park({str(i): mod.weight.detach() for i, (_, mod, _) in enumerate(mods)}, copy=True)
    try:
        with torch.no_grad():
            for _, mod, transposed in mods:
                w = mod.weight.T if transposed else mod.weight
                q, _ = quantize_dequantize(w, bits, group_size)
                mod.weight.copy_(q.T if transposed else q)
        yield len(mods)
    finally:
        with torch.no_grad():
            for i, (_, mod, _) in enumerate(mods):
                mod.weight.copy_(saved.get(str(i)))


def _accuracies(subject, suite: EvalSuite, bits: list[int], group_size: int) -> dict:
    out = {"full": suite.accuracies(subject)}
    for b in bits:
        with quantized(subject.model, b, group_size):
            out[f"int{b}"] = suite.accuracies(subject)
    return out


@register_attack
class Quantize(Attack):
    name = "quantize"
    Params = QuantizeParams
    merged_weights = True  # weights one by one: a LoRA subject's merged weights
    summary = "round-to-nearest int8/int4 quantization of the weights (Zhang et al. ICLR 2025)"

    def setup(self, original, target, params: QuantizeParams, references=None) -> dict:
        bits = sorted(set(params.bits), reverse=True)
        if not bits:
            raise UserInputError("quantize: give at least one bit width, e.g. bits=[8,4]")
        forget = target.all_forget_qa
        sets = {k: v for k, v in (("forget", forget), ("retain", sample_items(target.retain_qa, len(forget), params.seed)))
                if v}
        return {"bits": bits, "suite": EvalSuite(original, sets)}

    def measure(self, subject, setup: dict, params: QuantizeParams, role: str) -> dict:
        acc = _accuracies(subject, setup["suite"], setup["bits"], params.group_size)
        return {**acc, "group_size": params.group_size} if role == "original" else acc

    def score(self, acc: dict, original: dict, oracle: dict | None, setup: dict, params: QuantizeParams, name: str) -> dict:
        orig = original["full"]["forget"]
        per_bits = {}
        for b in setup["bits"]:
            key = f"int{b}"
            res = None
            if oracle is not None:
                res = residual(acc[key]["forget"], oracle[key]["forget"], orig, oracle["full"]["forget"])
            per_bits[key] = {"recovery": recovery(acc[key]["forget"], acc["full"]["forget"], orig), "residual": res}
        rec = [v["recovery"] for v in per_bits.values() if v["recovery"] is not None]
        res = [v["residual"] for v in per_bits.values() if v["residual"] is not None]
        return {"recovery": max(rec) if rec else None, "residual": max(res) if res else None,
                "acc": acc, "by_bits": per_bits, "group_size": params.group_size}
