"""Quantization: does rounding the weights bring the forgotten knowledge back?

Zhang et al. 2025 ("Catastrophic Failure of LLM Unlearning via Quantization", ICLR 2025) find
that 4-bit post-training quantization of models unlearned with small weight changes restores
much of the "forgotten" knowledge: the unlearning update is smaller than the quantization step,
so the unlearned and the original weights round to the same grid points.

Every linear weight inside the decoder layers (attention and MLP projections; the embeddings and
the output head stay in full precision, as transformers' bitsandbytes integration leaves
``lm_head`` and as AWQ/GPTQ quantize the blocks) is quantize-dequantized in place on the
subject's own model and restored bit for bit in ``finally``; the full-precision weights wait off
the device meanwhile (``subject/residency.py``: host memory, or a file), so no copy of the model
is made. ``scheme`` picks the quantizer:

- ``bnb`` (default; the paper's code, zzwjames/FailureLLMUnlearning@10131ae25f55f1d8feb744eabb235ffc3f094b1b:utils.py
  ``load_model``: ``BitsAndBytesConfig(load_in_4bit=True)`` / ``(load_in_8bit=True)``), as
  bitsandbytes computes it (bitsandbytes-foundation/bitsandbytes@95f9af309d4d5793847169c39288dcd3fcbdf564):

  * 4 bits: blockwise absmax over the weight flattened row-major, blocks of 64 (the last one
    shorter); each ``x / absmax`` is rounded to the nearest value of the 16-entry code table,
    ``fp4`` (BitsAndBytesConfig's default ``bnb_4bit_quant_type``: sign x {0, 1/192, 1/6, 1/4,
    1/3, 1/2, 2/3, 1}) or ``nf4`` (QLoRA's normal-float table), with the decision thresholds of
    ``csrc/kernels.cu`` ``dQuantizeFP4`` / ``dQuantizeNF4`` (a value exactly on a threshold
    goes to the lower code; FP4 rounds the magnitude, then applies the sign); dequantized as
    ``code · absmax``;
  * 8 bits: LLM.int8 (Dettmers et al. 2022) as ``MatMul8bitLt`` runs it with
    ``has_fp16_weights=False``: the weight (in float16) row-wise absmax,
    ``CB = round(w · 127 / max|w_row|)``, and at every forward the input (in float16) likewise
    per row, except the columns holding an entry with ``|x| >= int8_threshold`` (6.0,
    ``llm_int8_threshold``'s default), which are multiplied in input precision with the
    dequantized weight columns (the outlier decomposition; the outliers are also left out of the
    row's absmax). The input is emulated by a forward pre-hook that replaces it by its
    dequantized int8 value outside the outlier columns.

  Where bitsandbytes is installed and the weight is on a GPU, its own ``quantize_4bit`` /
  ``dequantize_4bit`` / ``int8_vectorwise_quant`` compute the codes; elsewhere an emulation of
  its code tables and kernels, tested against bitsandbytes (``tests/parity/test_parity_quantize.py``).
  Other bit widths than 8 and 4 are not bitsandbytes formats: ``scheme=bnb`` refuses them.
- ``rtn_sym``: round-to-nearest, symmetric, per group of ``group_size`` (128; the row when
  shorter) weights along the input dimension, ``q_max = 2^(b-1) - 1``:
  ``scale = max|w| / q_max``, ``q(w) = clamp(round(w / scale), -q_max, q_max) · scale``, so
  ``|w - q(w)| <= scale / 2``.
- ``rtn_asym``: round-to-nearest with a zero point, per group, as AWQ's
  ``pseudo_quantize_tensor`` (mit-han-lab/llm-awq@02c1dd657d1e37d770de3868483213439a54382b:awq/quantize/quantizer.py, the
  RTN baseline of the paper's AWQ/GPTQ comparison): ``scale = max(max w - min w, 1e-5) / (2^b - 1)``,
  ``z = clamp(-round(min w / scale), 0, 2^b - 1)``,
  ``q(w) = (clamp(round(w / scale) + z, 0, 2^b - 1) - z) · scale``.

Differences from running the reference itself: the dequantized weight is stored in the
subject's dtype (bitsandbytes' 4-bit layers compute in float32 by default: the same on a
float32 model, one more rounding on a bf16 one); LLM.int8's integer product is evaluated as
the product of the dequantized factors (equal up to float rounding); the outlier columns are
those of the batches this tool evaluates in.

Evaluated for the original, the oracle and every unlearned model at each bit width: forget QA
(both halves) and retain QA accuracy (a seeded sample of the retain QA as large as the forget
QA). With acc_b the forget accuracy after b-bit quantization and acc the accuracy in full
precision:

    recovery_b = (acc_b,unlearned - acc_unlearned) / (acc_original - acc_unlearned)
    residual_b = (acc_b,unlearned - acc_b,oracle) / (acc_original - acc_oracle)

and the headline is the attacker's best bit width: ``recovery = max_b recovery_b``,
``residual = max_b residual_b``. Retain accuracy shows whether a bit width still gives a usable
model (on a tiny model, int4 damages everything).

``metric`` puts another per-item score in place of exact match (answer probability, ROUGE-L,
TOFU's truth ratio, WMDP's multiple-choice accuracy; :mod:`unlearn_audit.metrics.itemwise`), so
benchmark targets get a defined recovery; Zhang et al. report MUSE's and WMDP's own metrics.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator

from ..errors import UserInputError
from ..metrics.itemwise import ItemScorer, chosen_scorer, set_means
from ..metrics.qa import EvalSuite
from ..metrics.recovery import recovery, residual
from ..params import ItemMetric, MaxNewTokens
from ..subject import residency
from ..subject.sites import decoder_layers
from .base import Attack, AttackParams, is_ensemble, register_attack, sample_items

Scheme = Literal["bnb", "rtn_sym", "rtn_asym"]
BNB_BLOCKSIZE = 64            # bitsandbytes' 4-bit blocksize (BitsAndBytesConfig has no setting for it)

# FP4 (1 sign, 2 exponent, 1 mantissa bit), magnitudes in increasing order, as bitsandbytes'
# table normalises them (0, 0.0625, 2, 3, 4, 6, 8, 12 over 12), and the kernel's thresholds
# between neighbours (csrc/kernels.cu dQuantizeFP4)
FP4_MAGNITUDES = torch.tensor([0.0, 0.0625, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0]) / 12.0
FP4_THRESHOLDS = torch.tensor([0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333,
                               0.8333333])
# NF4 (QLoRA, Dettmers et al. 2023): the 16 values in increasing order and the thresholds of
# csrc/kernels.cu dQuantizeNF4
NF4_VALUES = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                           -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                           0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                           0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                           0.7229568362236023, 1.0])
NF4_THRESHOLDS = torch.tensor([-0.8480964004993439, -0.6106329262256622, -0.4599952697753906,
                               -0.33967943489551544, -0.23460740596055984, -0.13791173323988914,
                               -0.045525018125772476, 0.03979014977812767, 0.1202552504837513,
                               0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
                               0.5016634166240692, 0.6427869200706482, 0.8614784181118011])


class QuantizeParams(AttackParams):
    bits: list[Annotated[int, Field(ge=2, le=8)]] = Field([8, 4], min_length=1, description="Bit widths to quantize to (2..8; scheme bnb: 8 and 4).")
    scheme: Scheme = Field("bnb", description="bnb: bitsandbytes LLM.int8 (8 bits) and fp4/nf4 (4 bits), as Zhang et al.'s code; "
                                              "rtn_sym: symmetric round-to-nearest per group; rtn_asym: with a zero point (AWQ's RTN).")
    bnb_4bit: Literal["fp4", "nf4"] = Field("fp4", description="bitsandbytes' 4-bit code table (scheme bnb).")
    int8_threshold: float = Field(6.0, ge=0, description="LLM.int8's outlier threshold on the inputs (scheme bnb, 8 bits; 0: no outlier columns).")
    group_size: int = Field(128, ge=1, description="Weights per quantization group along the input dimension (rtn schemes).")
    metric: ItemMetric = "exact_match"
    max_new_tokens: MaxNewTokens = 32

    @model_validator(mode="after")
    def _bnb_widths(self):
        if self.scheme == "bnb" and set(self.bits) - {8, 4}:
            raise ValueError(f"scheme bnb quantizes to 8 bits (LLM.int8) or 4 bits (fp4/nf4), not {sorted(set(self.bits) - {8, 4})}; "
                             "use scheme rtn_sym or rtn_asym for other widths")
        return self


def _grouped(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, int]:
    """``w (out, in)`` in float32 as ``(out, n_groups, size)``, the last group zero-padded."""
    out_dim, in_dim = w.shape
    size = min(group_size, in_dim)
    n_groups = -(-in_dim // size)
    return torch.nn.functional.pad(w.float(), (0, n_groups * size - in_dim)).view(out_dim, n_groups, size), in_dim


@torch.no_grad()
def rtn_symmetric(weight: torch.Tensor, bits: int, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """RTN symmetric per-group quantize-dequantize of a ``(out, in)`` weight along ``in``.

    Returns ``(dequantized (out, in), scale (out, n_groups))``; the last group of a row is
    shorter when ``in`` is not a multiple of ``group_size``.
    """
    if not 2 <= bits <= 8:
        raise UserInputError(f"quantize: bits must be between 2 and 8, not {bits}")
    q_max = 2 ** (bits - 1) - 1
    padded, in_dim = _grouped(weight, group_size)
    scale = padded.abs().amax(-1, keepdim=True) / q_max                       # (out, G, 1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(padded / safe), -q_max, q_max) * scale        # (out, G, size)
    return q.view(weight.shape[0], -1)[:, :in_dim].to(weight.dtype), scale.squeeze(-1)


@torch.no_grad()
def rtn_asymmetric(weight: torch.Tensor, bits: int, group_size: int = 128) -> torch.Tensor:
    """RTN with a zero point per group (AWQ's ``pseudo_quantize_tensor``) of a ``(out, in)``
    weight along ``in``; a short last group uses its own minimum and maximum."""
    if not 2 <= bits <= 8:
        raise UserInputError(f"quantize: bits must be between 2 and 8, not {bits}")
    q_top = 2 ** bits - 1
    padded, in_dim = _grouped(weight, group_size)
    size = padded.shape[-1]
    real = (torch.arange(padded.shape[1] * size, device=weight.device) < in_dim).view(1, -1, size)
    hi = torch.where(real, padded, -torch.inf).amax(-1, keepdim=True)
    lo = torch.where(real, padded, torch.inf).amin(-1, keepdim=True)
    scale = (hi - lo).clamp(min=1e-5) / q_top
    zero = (-torch.round(lo / scale)).clamp(0, q_top)
    q = (torch.clamp(torch.round(padded / scale) + zero, 0, q_top) - zero) * scale
    return q.view(weight.shape[0], -1)[:, :in_dim].to(weight.dtype)


def _bnb_functional(device: torch.device):
    """bitsandbytes' functional module where it is installed and ``device`` is a GPU, else None
    (the emulation below runs instead)."""
    if device.type != "cuda" or importlib.util.find_spec("bitsandbytes") is None:
        return None
    import bitsandbytes.functional as bnb_f
    return bnb_f


@torch.no_grad()
def bnb_4bit_codes(weight: torch.Tensor, quant_type: str = "fp4") -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' 4-bit quantization of ``weight`` (flattened row-major, blocks of 64), as
    ``(values, absmax)``: ``values`` the code table entry of every weight (in [-1, 1]), absmax
    one per block. Dequantized: ``values * absmax`` blockwise."""
    flat = weight.reshape(-1).float()
    n = flat.numel()
    n_blocks = -(-n // BNB_BLOCKSIZE)
    padded = torch.nn.functional.pad(flat, (0, n_blocks * BNB_BLOCKSIZE - n)).view(n_blocks, BNB_BLOCKSIZE)
    absmax = padded.abs().amax(-1, keepdim=True)
    # the kernel multiplies by the float32 reciprocal; an all-zero block stays zero
    scaled = padded * torch.where(absmax > 0, 1.0 / absmax, torch.zeros_like(absmax))
    if quant_type == "fp4":
        thresholds, table = FP4_THRESHOLDS.to(flat.device), FP4_MAGNITUDES.to(flat.device)
        values = table[torch.bucketize(scaled.abs(), thresholds)]           # x > t picks the upper code
        values = torch.where(scaled < 0, -values, values)
    elif quant_type == "nf4":
        values = NF4_VALUES.to(flat.device)[torch.bucketize(scaled, NF4_THRESHOLDS.to(flat.device))]
    else:
        raise UserInputError(f"quantize: bnb_4bit must be fp4 or nf4, not {quant_type!r}")
    return values.reshape(-1)[:n], absmax.squeeze(-1)


@torch.no_grad()
def bnb_4bit(weight: torch.Tensor, quant_type: str = "fp4") -> torch.Tensor:
    """4-bit quantize-dequantize as bitsandbytes' ``quantize_4bit`` then ``dequantize_4bit``
    (blocksize 64), in ``weight``'s dtype."""
    bnb_f = _bnb_functional(weight.device)
    if bnb_f is not None:
        packed, state = bnb_f.quantize_4bit(weight.contiguous(), blocksize=BNB_BLOCKSIZE, quant_type=quant_type)
        return bnb_f.dequantize_4bit(packed, state).to(weight.dtype)
    values, absmax = bnb_4bit_codes(weight, quant_type)
    blocks = torch.repeat_interleave(absmax, BNB_BLOCKSIZE)[:values.numel()]
    return (values * blocks).view(weight.shape).to(weight.dtype)


@torch.no_grad()
def int8_vectorwise(x: torch.Tensor, threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bitsandbytes' ``int8_vectorwise_quant`` of ``x (rows, cols)`` (in float16):
    ``(codes int8, row absmax float32, outlier column indices)``. With ``threshold > 0`` the
    entries with ``|x| >= threshold`` are left out of their row's absmax and the columns holding
    one are zeroed in the codes (computed apart in input precision)."""
    bnb_f = _bnb_functional(x.device)
    x16 = x.to(torch.float16)
    if bnb_f is not None:
        codes, absmax, cols = bnb_f.int8_vectorwise_quant(x16.contiguous(), threshold=threshold)
        return codes, absmax, cols if cols is not None else torch.empty(0, dtype=torch.long, device=x.device)
    cols = torch.empty(0, dtype=torch.long, device=x.device)
    if threshold > 0:
        outliers = x16.abs() >= threshold
        cols = torch.nonzero(outliers.any(0)).view(-1)
        x16 = x16.masked_fill(outliers, 0)
    absmax = x16.abs().amax(-1).float()
    scale = torch.where(absmax > 0, 127.0 / absmax, torch.zeros_like(absmax))
    codes = torch.round(x16.float() * scale.unsqueeze(-1)).to(torch.int8)
    if x.shape[0] > 1 and cols.numel():
        codes[:, cols] = 0
    return codes, absmax, cols


def int8_dequantize(codes: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """``codes · absmax / 127`` per row, in float32 (bitsandbytes' ``int8_vectorwise_dequant``)."""
    return codes.float() * (absmax.float().unsqueeze(-1) / 127.0)


def _int8_inputs(threshold: float):
    """A forward pre-hook that feeds a linear layer LLM.int8's view of its input: dequantized int8
    per row, the outlier columns as they were."""
    def hook(module, args):
        x = args[0]
        rows = x.reshape(-1, x.shape[-1])
        codes, absmax, cols = int8_vectorwise(rows, threshold)
        seen = int8_dequantize(codes, absmax)
        if cols.numel():
            seen[:, cols] = rows[:, cols].float()
        return (seen.to(x.dtype).view(x.shape), *args[1:])
    return hook


def quantizable(model) -> list[tuple[str, torch.nn.Module, bool]]:
    """``(name, module, transposed)`` of every linear layer of the decoder blocks; GPT-2's
    ``Conv1D`` stores its weight as (in, out), hence ``transposed``. An ensemble's (SISA's):
    every constituent's, named ``<member>.<layer>.<name>``."""
    if is_ensemble(model):
        return [(f"{m}.{name}", mod, t) for m, member in enumerate(model.members) for name, mod, t in quantizable(member)]
    out = []
    for i, layer in enumerate(decoder_layers(model)):
        for name, mod in layer.named_modules():
            if isinstance(mod, torch.nn.Linear):
                out.append((f"{i}.{name}", mod, False))
            elif type(mod).__name__ == "Conv1D" and getattr(mod, "weight", None) is not None:
                out.append((f"{i}.{name}", mod, True))
    return out


def quantize_weight(w: torch.Tensor, bits: int, scheme: Scheme = "bnb", group_size: int = 128,
                    bnb_4bit_type: str = "fp4") -> torch.Tensor:
    """The quantize-dequantized ``(out, in)`` weight ``w`` under ``scheme`` at ``bits``."""
    if scheme == "rtn_sym":
        return rtn_symmetric(w, bits, group_size)[0]
    if scheme == "rtn_asym":
        return rtn_asymmetric(w, bits, group_size)
    if bits == 4:
        return bnb_4bit(w, bnb_4bit_type)
    if bits == 8:
        return int8_dequantize(*int8_vectorwise(w)[:2]).to(w.dtype)
    raise UserInputError(f"quantize: scheme bnb quantizes to 8 or 4 bits, not {bits}")


@contextmanager
def quantized(model, bits: int, scheme: Scheme = "bnb", group_size: int = 128, bnb_4bit_type: str = "fp4",
              int8_threshold: float = 6.0) -> Iterator[int]:
    """Run ``model`` with its decoder linear weights quantize-dequantized (and, for LLM.int8,
    its inputs through the int8 view); restored on exit. Yields the number of weight matrices
    quantized."""
    mods = quantizable(model)
    if not mods:
        raise UserInputError(f"quantize: {type(model).__name__} has no linear layers in its decoder blocks")
    # the full-precision weights wait where offloaded weights go (host memory, or a file), not
    # beside the model on its device; each comes back alone
    saved = residency.park({str(i): mod.weight.detach() for i, (_, mod, _) in enumerate(mods)}, copy=True)
    with ExitStack() as hooks:
        try:
            with torch.no_grad():
                for _, mod, transposed in mods:
                    w = mod.weight.T if transposed else mod.weight
                    q = quantize_weight(w, bits, scheme, group_size, bnb_4bit_type)
                    mod.weight.copy_(q.T if transposed else q)
                    if scheme == "bnb" and bits == 8:
                        hooks.callback(mod.register_forward_pre_hook(_int8_inputs(int8_threshold)).remove)
            yield len(mods)
        finally:
            with torch.no_grad():
                for i, (_, mod, _) in enumerate(mods):
                    mod.weight.copy_(saved.get(str(i)))


def _accuracies(subject, suite: EvalSuite, params: QuantizeParams, bits: list[int], scorer: ItemScorer | None) -> dict:
    """``{"full" | "int<b>": {set: mean score}}``: exact-match accuracy, or the mean per-item
    score of ``scorer`` (the chosen metric)."""
    out = {"full": set_means(subject, suite, scorer)}
    for b in bits:
        with quantized(subject.model, b, params.scheme, params.group_size, params.bnb_4bit, params.int8_threshold):
            out[f"int{b}"] = set_means(subject, suite, scorer)
    return out


def _settings(params: QuantizeParams) -> dict:
    """What the result records of how it quantized."""
    if params.scheme == "bnb":
        return {"scheme": "bnb", "bnb_4bit": params.bnb_4bit, "int8_threshold": params.int8_threshold}
    return {"scheme": params.scheme, "group_size": params.group_size}


@register_attack
class Quantize(Attack):
    name = "quantize"
    Params = QuantizeParams
    merged_weights = True  # weights one by one: a LoRA subject's merged weights
    summary = "post-training quantization: bitsandbytes LLM.int8 / fp4 (default), or RTN int8/int4 (Zhang et al. ICLR 2025)"

    def setup(self, original, target, params: QuantizeParams, references=None) -> dict:
        bits = sorted(set(params.bits), reverse=True)
        if not bits:
            raise UserInputError("quantize: give at least one bit width, e.g. bits=[8,4]")
        forget = target.all_forget_qa
        sets = {k: v for k, v in (("forget", forget), ("retain", sample_items(target.retain_qa, len(forget), params.seed)))
                if v}
        suite = EvalSuite(original, sets)
        return {"bits": bits, "suite": suite,
                "scorer": chosen_scorer(suite, target, params.metric, ("forget",), params.max_new_tokens)}

    def measure(self, subject, setup: dict, params: QuantizeParams, role: str) -> dict:
        acc = _accuracies(subject, setup["suite"], params, setup["bits"], setup["scorer"])
        return {**acc, **_settings(params)} if role == "original" else acc

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
                "acc": acc, "by_bits": per_bits, "metric": params.metric, **_settings(params)}
