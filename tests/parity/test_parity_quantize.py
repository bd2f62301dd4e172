"""Quantization (``quantize``) against bitsandbytes and AWQ.

References:
- zzwjames/FailureLLMUnlearning@10131ae25f55f1d8feb744eabb235ffc3f094b1b:utils.py ``load_model``
  (Zhang et al. 2025): ``BitsAndBytesConfig(load_in_4bit=True)`` and ``(load_in_8bit=True)``,
  every other setting at transformers' default;
- bitsandbytes-foundation/bitsandbytes@95f9af309d4d5793847169c39288dcd3fcbdf564:
  csrc/kernels.cu ``dQuantizeFP4`` / ``dQuantizeNF4`` (the decision trees: ``x > t`` takes the
  upper code; FP4 decides the magnitude, then the sign bit), ``kQuantizeBlockwise`` (absmax per
  block, ``x * (1 / absmax)``), ``kInt8VectorQuant`` (``round(x * 127 / absmax_row)``, entries
  with ``|x| >= threshold`` left out of the absmax and zeroed); bitsandbytes/functional.py
  ``get_4bit_type`` (the code tables); bitsandbytes/backends/default/ops.py
  ``int8_mixed_scaled_mm`` (``CA·CBᵀ · SCA·SCB / 127² + A[:, outliers] · dequant(CB[:, outliers])ᵀ``);
- mit-han-lab/llm-awq@02c1dd657d1e37d770de3868483213439a54382b:awq/quantize/quantizer.py
  ``pseudo_quantize_tensor`` (zero-point RTN).

Where bitsandbytes is installed (the ``quantize`` extra), the codes are also compared with the
library's own functions on CPU.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from parity_helpers import tiny_llama

from unlearn_audit.attacks import quantize as qz
from unlearn_audit.attacks.quantize import QuantizeParams, quantized

HAVE_BNB = importlib.util.find_spec("bitsandbytes") is not None
needs_bnb = pytest.mark.skipif(not HAVE_BNB, reason="bitsandbytes not installed (the quantize extra)")


# ---------------------------------------------------------------- the kernels' trees, re-derived

def _f32(t: float) -> float:
    """A C float literal's value (``0.29166667f``): the kernel compares in float32."""
    return torch.tensor(t, dtype=torch.float32).item()


def fp4_kernel_code(x: float) -> int:
    """The 4-bit FP4 code of a scaled value, by kernels.cu's binary search (sign in bit 3)."""
    sign = 8 if x < 0 else 0
    x = abs(x)
    if x > _f32(0.29166667):
        if x > _f32(0.583333):
            return (3 if x > _f32(0.8333333) else 2) + sign
        return (5 if x > _f32(0.4166667) else 4) + sign
    if x > _f32(0.0859375):
        return (7 if x > _f32(0.20833333) else 6) + sign
    return (1 if x > _f32(0.00260417) else 0) + sign


def nf4_kernel_code(x: float) -> int:
    """The NF4 code of a scaled value by kernels.cu's tree: the number of thresholds below x."""
    tree = [-0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
            -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
            0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
            0.5016634166240692, 0.6427869200706482, 0.8614784181118011]
    return sum(x > _f32(t) for t in tree)


# functional.py get_4bit_type: FP4 in bit-pattern order, normalised by its largest magnitude
FP4_TABLE = [v / 12 for v in (0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0)]
NF4_TABLE = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]


def reference_4bit(w: torch.Tensor, quant_type: str) -> torch.Tensor:
    """Blockwise (64, flattened row-major) absmax, each scaled value through the kernel's tree,
    dequantized as table[code] * absmax."""
    flat = w.reshape(-1).float()
    out = torch.empty_like(flat)
    code_of, table = (fp4_kernel_code, FP4_TABLE) if quant_type == "fp4" else (nf4_kernel_code, NF4_TABLE)
    for s in range(0, flat.numel(), 64):
        block = flat[s:s + 64]
        absmax = block.abs().max()
        inv = torch.tensor(1.0, dtype=torch.float32) / absmax
        for j, x in enumerate(block):
            scaled = float((x * inv).to(torch.float32))
            out[s + j] = torch.tensor(table[code_of(scaled)], dtype=torch.float32) * absmax
    return out.view(w.shape).to(w.dtype)


def _weights(seed: int, shape=(6, 100)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 0.02


@pytest.mark.parametrize("quant_type", ["fp4", "nf4"])
def test_4bit_equals_the_kernels_tree_and_tables(quant_type):
    """Ours equals the kernel's decision tree and get_4bit_type's table on a weight whose 600
    entries span 10 blocks (the last one shorter, 24 entries)."""
    w = _weights(1)
    ours = qz.bnb_4bit(w, quant_type)
    assert torch.equal(ours, reference_4bit(w, quant_type))
    assert len(torch.unique(ours.reshape(-1)[:64])) <= 16


def test_4bit_ties_go_where_the_kernel_sends_them():
    """Scaled values exactly on a kernel threshold take the lower code; just above, the upper
    one; negative values mirror the magnitude (FP4 is sign-magnitude)."""
    thresholds = qz.FP4_THRESHOLDS.tolist()
    for t in thresholds:
        for x in (t, float(torch.nextafter(torch.tensor(t), torch.tensor(2.0)))):
            block = torch.tensor([1.0, x, -x] + [0.0] * 61)                 # absmax 1: scaled = x
            ours = qz.bnb_4bit(block, "fp4")
            assert float(ours[1]) == _f32(FP4_TABLE[fp4_kernel_code(x)])
            assert float(ours[2]) == -_f32(FP4_TABLE[fp4_kernel_code(x)])
    for t in qz.NF4_THRESHOLDS.tolist():
        block = torch.tensor([1.0, t] + [0.0] * 62)
        assert float(qz.bnb_4bit(block, "nf4")[1]) == _f32(NF4_TABLE[nf4_kernel_code(t)])


def reference_int8_rows(x: torch.Tensor, threshold: float):
    """kInt8VectorQuant + int8_vectorwise_quant: float16 input; outliers (|x| >= threshold) out of
    the absmax and zeroed, their columns zeroed when there is more than one row."""
    x16 = x.to(torch.float16).float()
    outlier = (x16.abs() >= threshold) if threshold > 0 else torch.zeros_like(x16, dtype=torch.bool)
    kept = torch.where(outlier, 0.0, x16)
    absmax = kept.abs().amax(1)
    codes = torch.round(kept * (127.0 / absmax).unsqueeze(1))
    cols = torch.nonzero(outlier.any(0)).view(-1)
    if x.shape[0] > 1:
        codes[:, cols] = 0
    return codes.to(torch.int8), absmax, cols


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_int8_codes_equal_the_kernel(threshold):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 48, generator=g) * 3
    codes, absmax, cols = qz.int8_vectorwise(x, threshold)
    ref = reference_int8_rows(x, threshold)
    assert torch.equal(codes, ref[0]) and torch.equal(absmax, ref[1]) and torch.equal(cols, ref[2])
    assert (cols.numel() > 0) == (threshold > 0)


def test_llm_int8_linear_output_is_the_mixed_int8_product():
    """A decoder Linear under ``quantized(bits=8)`` outputs
    ``CA·CBᵀ·SCA·SCB/127² + A_outliers · W_deq,outliersᵀ`` (int8_mixed_scaled_mm), computed here
    in float64 from the integer codes."""
    model = tiny_llama(3)
    layer = model.model.layers[0].self_attn.q_proj
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, layer.in_features, generator=g) * 3
    x[0, 1, 7] = 9.0                                                          # an outlier column
    rows = x.reshape(-1, layer.in_features)
    ca, sca, cols = reference_int8_rows(rows, 6.0)
    cb, scb, _ = reference_int8_rows(layer.weight.detach(), 0.0)
    assert 7 in cols.tolist()
    expected = (ca.double() @ cb.double().T) * (sca.double()[:, None] * scb.double()[None, :]) / 127 ** 2
    w_deq = cb.double() * scb.double()[:, None] / 127
    expected += rows[:, cols].double() @ w_deq[:, cols].T
    with torch.no_grad(), quantized(model, 8) as n:
        out = layer(x).reshape(rows.shape[0], -1)
    assert n == 14                                                            # 2 layers x 7 linears
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)
    with torch.no_grad(), quantized(model, 8, int8_threshold=0.0):
        no_outliers = layer(x).reshape(rows.shape[0], -1)
    assert float((no_outliers.double() - expected).abs().max()) > 1e-4     # the outlier column matters


def reference_awq(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """pseudo_quantize_tensor(zero_point=True): per group of ``group`` along the rows."""
    g = w.float().reshape(-1, group)
    hi, lo = g.amax(1, keepdim=True), g.amin(1, keepdim=True)
    top = 2 ** bits - 1
    scale = (hi - lo).clamp(min=1e-5) / top
    zero = (-torch.round(lo / scale)).clamp(0, top)
    return ((torch.clamp(torch.round(g / scale) + zero, 0, top) - zero) * scale).reshape(w.shape)


@pytest.mark.parametrize("bits", [8, 4, 3])
def test_rtn_asym_equals_awq(bits):
    w = _weights(4, (8, 256))
    assert torch.equal(qz.rtn_asymmetric(w, bits, 128), reference_awq(w, bits, 128))


def test_defaults_are_the_papers_bitsandbytes_configs():
    """Zhang et al. load with BitsAndBytesConfig(load_in_4bit / load_in_8bit) and nothing else:
    FP4 and LLM.int8 with transformers' outlier threshold."""
    tf = pytest.importorskip("transformers")
    p = QuantizeParams()
    four, eight = tf.BitsAndBytesConfig(load_in_4bit=True), tf.BitsAndBytesConfig(load_in_8bit=True)
    assert (p.scheme, sorted(p.bits)) == ("bnb", [4, 8])
    assert p.bnb_4bit == four.bnb_4bit_quant_type
    assert p.int8_threshold == eight.llm_int8_threshold
    assert not four.bnb_4bit_use_double_quant


def test_default_4bit_is_not_symmetric_rtn():
    """The default 4-bit weight is bitsandbytes FP4; the former default (symmetric RTN per 128)
    gives another weight, so the tests above can tell them apart."""
    w = _weights(5, (4, 128))
    assert torch.equal(qz.quantize_weight(w, 4), reference_4bit(w, "fp4"))
    assert not torch.equal(qz.quantize_weight(w, 4, "rtn_sym"), reference_4bit(w, "fp4"))


@needs_bnb
@pytest.mark.parametrize("quant_type", ["fp4", "nf4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_4bit_equals_bitsandbytes(quant_type, dtype):
    """Against the installed library's quantize_4bit / dequantize_4bit (CPU). Its CPU backend
    puts the boundaries at float32 midpoints of the table, an ulp away from some of the CUDA
    kernel's constants; the two may part only on a value that close to a boundary."""
    import bitsandbytes.functional as bnb_f

    w = _weights(6, (32, 200)).to(dtype)
    packed, state = bnb_f.quantize_4bit(w, blocksize=64, quant_type=quant_type)
    theirs = bnb_f.dequantize_4bit(packed, state)
    ours = qz.bnb_4bit(w, quant_type)
    values, absmax = qz.bnb_4bit_codes(w, quant_type)
    assert torch.equal(absmax, state.absmax)
    differ = (ours != theirs).reshape(-1)
    scaled = (w.reshape(-1).float() * torch.repeat_interleave(1.0 / absmax, 64)[:w.numel()])
    bounds = (qz.FP4_THRESHOLDS if quant_type == "fp4" else qz.NF4_THRESHOLDS)
    near = ((scaled.abs() if quant_type == "fp4" else scaled)[:, None] - bounds[None, :]).abs().min(1).values < 1e-6
    assert not bool((differ & ~near).any())
    assert float(differ.float().mean()) < 0.01


@needs_bnb
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_int8_codes_equal_bitsandbytes(threshold):
    import bitsandbytes.functional as bnb_f

    g = torch.Generator().manual_seed(7)
    x = torch.randn(10, 64, generator=g) * 3
    codes, absmax, cols = bnb_f.int8_vectorwise_quant(x.to(torch.float16), threshold=threshold)
    ours = qz.int8_vectorwise(x, threshold)
    assert torch.equal(ours[0], codes) and torch.equal(ours[1], absmax)
    assert torch.equal(ours[2], cols if cols is not None else torch.empty(0, dtype=torch.long))


@needs_bnb
def test_the_bitsandbytes_path_equals_the_emulation(monkeypatch):
    """On a GPU the library computes the codes; forced onto CPU here, it gives our emulation's
    weights (up to a boundary tie, see above) and the same int8 inputs."""
    import bitsandbytes.functional as bnb_f

    w = _weights(8, (16, 128))
    emulated = {b: qz.quantize_weight(w, b) for b in (8, 4)}
    monkeypatch.setattr(qz, "_bnb_functional", lambda device: bnb_f)
    for b in (8, 4):
        assert int((qz.quantize_weight(w, b) != emulated[b]).sum()) <= 1
