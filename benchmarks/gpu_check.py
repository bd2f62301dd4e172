"""One short GPU check (issue 14, item 7): unlearning, ``rtt`` and ``patching`` on a random
~0.3B Llama in bf16, full fine-tuning and LoRA, with peak GPU memory in units of the model's
parameter bytes and the optimiser step time; then ``organism train --base`` (issue 16) on the
same model with LoRA, one epoch for each of its two models.

    scripts/gpu_check.sh                       # on a machine with a CUDA GPU (a few minutes)
    .venv/bin/python benchmarks/gpu_check.py --device cpu --small   # the same path on CPU, tiny

The model is random (no hub here): what it measures is memory and speed, not unlearning. The
target is the micro organism's world concept 0 (trained on first use, ~30 s), asked through a
tokenizer trained on that world. Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("UNLEARN_AUDIT_PROGRESS", "0")

from unlearn_audit.api import target_for, unlearn  # noqa: E402
from unlearn_audit.attacks import get_attack  # noqa: E402
from unlearn_audit.organisms import BaseRecipe, based_organism, organism  # noqa: E402
from unlearn_audit.subject import load_pretrained  # noqa: E402
from unlearn_audit.training import loop  # noqa: E402

STEPS = 10


def random_llama(path: Path, tokenizer, small: bool) -> None:
    import transformers as tf

    torch.manual_seed(0)
    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4) if small else \
        dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16)
    cfg = tf.LlamaConfig(vocab_size=32000, num_key_value_heads=size["num_attention_heads"], **size,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.eos_token_id)
    tf.LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


class StepClock:
    """Optimiser step times, read at the training loop's per-step fault point."""

    def __init__(self):
        self.times: list[float] = []
        self._point = loop.faults.point

    def __enter__(self):
        def point(name):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            self._point(name)

        loop.faults.point = point
        return self

    def __exit__(self, *exc):
        loop.faults.point = self._point

    def median_ms(self) -> float | None:
        gaps = sorted(b - a for a, b in zip(self.times, self.times[1:], strict=False))
        return 1e3 * gaps[len(gaps) // 2] if gaps else None


def peak(fn, device) -> tuple[object, float]:
    """``fn()``'s result and the peak allocated bytes while it ran (CUDA; 0 on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    out = fn()
    return out, float(torch.cuda.max_memory_allocated()) if device.type == "cuda" else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--small", action="store_true", help="a 2-layer model: checks the path, measures nothing")
    args = ap.parse_args()
    device = torch.device(args.device)
    micro = organism("micro", 0)[0]
    target = target_for("world:0", micro)
    with tempfile.TemporaryDirectory() as tmp:
        random_llama(Path(tmp) / "model", micro.tokenizer, args.small)
        subject = load_pretrained(Path(tmp) / "model", device=args.device, dtype=args.dtype)
        model_bytes = sum(p.numel() * p.element_size() for p in subject.model.parameters())
        params = sum(p.numel() for p in subject.model.parameters())
        name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
        print(f"{name}, torch {torch.__version__}: random Llama, {params / 1e6:.0f}M parameters, "
              f"{args.dtype} ({model_bytes / 2**30:.2f} GiB); gradient_difference {STEPS} steps, batch 16\n")
        print("| mode | unlearn peak / model | step ms | rtt peak / model | patching peak / model |")
        print("|---|---|---|---|---|")
        for mode, lora in (("full fine-tuning", {}), ("LoRA r=16", {"lora_r": 16})):
            with StepClock() as clock:
                unlearned, unlearn_peak = peak(lambda lora=lora: unlearn(subject, target, "gradient_difference",
                                                                         steps=STEPS, lr=1e-5, **lora), device)
            rtt = get_attack("rtt")
            rtt_params = rtt.params({"checkpoints": [0, 5], "bootstrap": 0, "reemergence": False, **lora})
            _, rtt_peak = peak(lambda a=rtt, p=rtt_params, u=unlearned: a.run(subject, {"u": u}, None, target, p), device)
            patching = get_attack("patching")
            patch_params = patching.params({"max_questions": 16})
            _, patch_peak = peak(lambda a=patching, p=patch_params, u=unlearned: a.run(subject, {"u": u}, None, target, p),
                                 device)
            step = clock.median_ms()
            print(f"| {mode} | {unlearn_peak / model_bytes:.2f}x | {step:.0f} | {rtt_peak / model_bytes:.2f}x | "
                  f"{patch_peak / model_bytes:.2f}x |", flush=True)
            del unlearned
        # the world fine-tuned into the base (organism train --base), LoRA, one epoch per model:
        # memory and time of the path, not learning (the base is random)
        recipe = BaseRecipe(world="micro", lora_r=16, lr=1e-4, max_epochs=1, target_acc=1.01)
        start = time.perf_counter()
        _, base_peak = peak(lambda: based_organism(str(Path(tmp) / "model"), 0, recipe=recipe, cache_dir=Path(tmp) / "cache",
                                                   device=args.device, dtype=args.dtype), device)
        print(f"\norganism train --base, LoRA r 16, world micro, one epoch each for full and oracle: "
              f"peak {base_peak / model_bytes:.2f}x model, {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
