"""bf16 training: float32 master weights (what the training loop does) against float32 weights
under ``torch.autocast(bfloat16)`` (the other choice issue 14 names), and bf16 weights stepped
directly (the old behaviour).

    .venv/bin/python benchmarks/bench_precision.py        # ~1 min on 2 cores

On a tiny random Llama (N(0, 0.02) weights), 20 AdamW steps at lr 1e-5 on one batch, each
variant reports, in units of the bf16 model's parameter bytes:

- state: weights + gradients + optimiser moments (+ masters), live at the optimiser step;
- saved: what autograd holds for the backward pass (activations, and under autocast the bf16
  casts of the weights), counted through ``saved_tensors_hooks`` at the end of the forward;
- kept: what the trained model weighs afterwards, for the evaluations and attacks that follow;

and the update's fidelity against a float32 run from the same weights: the relative error of
the trained weights' update, and the fraction of the weights the float32 run moved that moved.
Step times are CPU figures (bf16 matmuls are slow on this CPU) and say nothing about a GPU.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from unlearn_audit.metrics.likelihood import mean_token_nll  # noqa: E402
from unlearn_audit.training import TrainConfig, loop, train  # noqa: E402

STEPS, LR = 20, 1e-5


def tiny_llama() -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, attention_dropout=0.0)
    model = tf.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model


def batch() -> dict:
    ids = torch.randint(0, 512, (8, 64), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def storages(tensors) -> dict[int, int]:
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def state_bytes() -> int:
    """Every live tensor the garbage collector sees, and every parameter's grad."""
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor):
            seen.update(storages([obj] + ([obj.grad] if obj.grad is not None else [])))
    return sum(seen.values())


def run(variant: str) -> dict:
    model = tiny_llama()
    if variant != "float32 weights, autocast bf16" and variant != "float32 (reference)":
        model.to(torch.bfloat16)
    unit = sum(p.numel() for p in model.parameters()) * 2      # the bf16 model's bytes
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    data, peak, saved, times = batch(), [0], [0], []
    autocast = variant == "float32 weights, autocast bf16"

    def loss_fn(b):
        held: dict[int, int] = {}
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                held.update(storages([t]))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = mean_token_nll(model, b)
        saved[0] = max(saved[0], sum(held.values()))
        times.append(time.perf_counter())
        return loss

    point = loop.faults.point
    gc.collect()
    # what this script holds besides the model (``before``, the reference update) is not the run's
    outside = state_bytes() - sum(p.untyped_storage().nbytes() for p in model.parameters())
    loop.faults.point = lambda name: peak.__setitem__(0, max(peak[0], state_bytes() - outside))
    if variant == "bf16 weights stepped directly":
        low, loop.MasterWeights.LOW = loop.MasterWeights.LOW, ()
    try:
        train(model, loss_fn, iter([data] * STEPS), TrainConfig(steps=STEPS, lr=LR))
    finally:
        loop.faults.point = point
        if variant == "bf16 weights stepped directly":
            loop.MasterWeights.LOW = low
    # the masters are gone by now; for the masters variant the trained weights are the bf16
    # model's, so fidelity is judged on what the run leaves (see the test for the masters)
    update = {n: p.detach().float() - before[n] for n, p in model.named_parameters()}
    gc.collect()
    kept = sum(p.untyped_storage().nbytes() for p in model.parameters())
    return {"before": before, "state": peak[0] / unit, "saved": saved[0] / unit, "kept": kept / unit, "update": update,
            "step_ms": 1e3 * statistics.median(b - a for a, b in zip(times, times[1:], strict=False))}


def main() -> None:
    torch.set_num_threads(2)
    reference = run("float32 (reference)")["update"]
    moved = sum(int((u != 0).sum()) for u in reference.values())
    norm = sum(float(u.norm()) ** 2 for u in reference.values()) ** 0.5
    print(f"tiny Llama (hidden 256, 4 layers), {STEPS} AdamW steps at lr {LR:g}, batch 8 x 64; "
          "memory in units of the bf16 model's parameter bytes\n")
    print("| variant | state at the step | saved for backward | kept after | update error vs fp32 "
          "| the same, weights rounded to bf16 | weights moved | step ms (CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    for variant in ("bf16 weights, float32 masters", "float32 weights, autocast bf16", "bf16 weights stepped directly"):
        r = run(variant)
        err = sum(float((r["update"][n] - reference[n]).norm()) ** 2 for n in reference) ** 0.5 / norm
        frac = sum(int(((r["update"][n] != 0) & (reference[n] != 0)).sum()) for n in reference) / moved
        rounded = sum(float(((r["update"][n] + r["before"][n]).bfloat16().float() - r["before"][n].bfloat16().float()
                             - reference[n]).norm()) ** 2 for n in reference) ** 0.5 / norm
        print(f"| {variant} | {r['state']:.2f}x | {r['saved']:.2f}x | {r['kept']:.2f}x | {err:.3f} | {rounded:.3f} | "
              f"{100 * frac:.1f}% | {r['step_ms']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
