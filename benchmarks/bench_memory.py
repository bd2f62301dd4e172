"""Peak live tensor memory of every method and attack, in units of the model's parameter bytes.

    .venv/bin/python benchmarks/bench_memory.py [--methods a,b] [--attacks a,b] [--lora R]

Process RSS of a tiny model hides copies (allocator pools, shared pages), so this counts what a
GPU would have to hold: at every optimiser step, after every ``Subject.copy`` and after every
measurement, and at forward passes of a Subject's model during an attack (parameter-shaped
tensors only there; see :func:`instrument`), the bytes of all live floating-point tensors
(unique storages found by the garbage collector, plus each parameter's ``.grad``), divided by
the bytes of one model's parameters.

Everything runs as a study runs it (``run_experiment``: ``residency.off_device_at_rest``):
between steps no model is on the device, and each step brings in only the models it uses
(``subject/residency.py``); on an accelerator the others go to host memory. This CPU run sets
``UNLEARN_AUDIT_OFFLOAD=disk`` (``--offload``) so that they leave memory the garbage collector
sees, as they leave a GPU; the figure is what the compute device holds.

The targets (issue 14): full fine-tuning and relearning <= 4.1x (weights + grads + 2 AdamW
moments), every other attack <= 1.2x; with LoRA (``--lora R``: ``lora_r=R`` for every method
and attack that has it) <= 1.3x.

Runs on the micro organism (fp32, CPU); on a GPU, ``torch.cuda.max_memory_allocated`` is the
figure to add beside this one (``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("UNLEARN_AUDIT_PROGRESS", "0")

from unlearn_audit import faults  # noqa: E402
from unlearn_audit.api import target_for, unlearn  # noqa: E402
from unlearn_audit.attacks import ATTACKS, attack_names, get_attack  # noqa: E402
from unlearn_audit.methods import method_names  # noqa: E402
from unlearn_audit.organisms import organism  # noqa: E402
from unlearn_audit.subject import residency  # noqa: E402
from unlearn_audit.subject.subject import Subject  # noqa: E402

CHEAP_METHOD = {"steps": 3, "reinforce_steps": 2, "v_steps": 2, "search_steps": 2}
CHEAP_ATTACK = {"checkpoints": [0, 2], "bootstrap": 0, "reemergence": False, "max_questions": 4,
                "max_new_tokens": 8, "shots": [0, 1], "bits": [8], "alphas": [0.0, 1.0]}
EVERY_NTH_FORWARD = 25  # see instrument


def live_bytes(shapes: set | None = None) -> int:
    """Bytes of every live floating-point tensor's storage (each storage once) and of every
    parameter's grad. Integer tensors are the encoded data sets (token ids, masks, labels):
    against a 0.6 MB model they weigh several models, against a 7B one nothing, and they stay
    in host memory; they are left out. ``shapes``: count only tensors of these shapes."""
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        try:
            with warnings.catch_warnings():  # isinstance on some objects warns (deprecated proxies)
                warnings.simplefilter("ignore")
                tensors = [obj] if isinstance(obj, torch.Tensor) else []
        except ReferenceError:
            continue
        for t in list(tensors):
            if isinstance(t, torch.nn.Parameter) and t.grad is not None:
                tensors.append(t.grad)
        for t in tensors:
            if t.device.type == "meta" or not t.is_floating_point() or (shapes is not None and tuple(t.shape) not in shapes):
                continue
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class Peak:
    """The largest :func:`live_bytes` seen at the measurement points while active."""

    def __init__(self):
        self.value = 0
        self.active = False
        self.forwards = False  # sample at forward passes too (attacks only; see instrument)

    def sample(self, *_, shapes: set | None = None):
        if self.active:
            self.value = max(self.value, live_bytes(shapes))


def instrument(peak: Peak) -> None:
    original_point, original_copy = faults.point, Subject.copy

    def point(name):
        peak.sample()
        original_point(name)

    def copy(self, *args, **kwargs):
        out = original_copy(self, *args, **kwargs)
        peak.sample()
        return out

    faults.point = point
    Subject.copy = copy
    # inside an attack's measurement too, at forward passes of a Subject's model: weight clones
    # that live only while an evaluation runs are seen there. Only parameter-shaped tensors
    # count at a forward: its inputs and the evaluation's activations (one batch's logits weigh
    # ten of these 0.6 MB models, and 0.04x of a 7B one) are a budget apart from the weights.
    # Methods are not sampled at forwards (their points are the optimiser steps and copies).
    # A count per forward (every generated token is one) would take hours, so a forward is
    # sampled when the tracked models' parameter storages differ from the last sampled
    # forward's (a model moved on or off the device, its weights swapped, merged or restored),
    # and every EVERY_NTH_FORWARD-th forward besides.
    last = {"storages": None, "forwards": 0}

    def on_forward(module, args):
        if not (peak.active and peak.forwards) or module not in residency._TRACKED:
            return
        last["forwards"] += 1
        models = list(residency._TRACKED)
        storages = tuple(p.untyped_storage().data_ptr() for m in models for p in m.parameters())
        if storages != last["storages"] or last["forwards"] % EVERY_NTH_FORWARD == 0:
            last["storages"] = storages
            peak.sample(shapes={tuple(p.shape) for m in models for p in m.parameters()})

    torch.nn.modules.module.register_module_forward_pre_hook(on_forward)
    ATTACKS.load()
    for attack in set(type(a) for a in ATTACKS.values()):
        measure = attack.measure

        def wrapped(self, *args, _measure=measure, **kwargs):
            out = _measure(self, *args, **kwargs)
            peak.sample()
            return out

        attack.measure = wrapped


def fields(params_cls, cheap: dict) -> dict:
    return {k: v for k, v in cheap.items() if k in params_cls.model_fields}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default=None, help="comma list (default: every method)")
    ap.add_argument("--attacks", default=None, help="comma list (default: every attack)")
    ap.add_argument("--lora", type=int, default=0, help="lora_r for the methods and attacks that take it (0: none)")
    ap.add_argument("--offload", default="disk", choices=["disk", "none"],
                    help="where models not in use go (disk: as off a GPU; none: all stay resident)")
    args = ap.parse_args()
    os.environ["UNLEARN_AUDIT_OFFLOAD"] = args.offload
    if args.lora:
        CHEAP_METHOD["lora_r"] = CHEAP_ATTACK["lora_r"] = args.lora
    torch.set_num_threads(2)
    cache = os.environ.get("UNLEARN_AUDIT_TEST_CACHE", ".cache/test-organisms")
    full, oracle = organism("micro", 0, cache_dir=cache)
    target = target_for("world:0", full)
    model_bytes = sum(p.untyped_storage().nbytes() for p in full.model.parameters())
    peak = Peak()
    instrument(peak)
    lora = f", LoRA r={args.lora} where a method or attack takes it" if args.lora else ""
    print(f"micro organism: {model_bytes / 1e6:.2f} MB of parameters (fp32){lora}; offload: {args.offload}\n")
    with residency.off_device_at_rest():
        measure_all(args, full, oracle, target, model_bytes, peak)


def measure_all(args, full, oracle, target, model_bytes: int, peak: Peak) -> None:
    from unlearn_audit.methods import get_method

    print("| method | kind | peak live tensors / model bytes |")
    print("|---|---|---|")
    methods = args.methods.split(",") if args.methods else method_names()
    for name in methods:
        m = get_method(name)
        gc.collect()
        peak.value, peak.active = live_bytes(), True
        start = peak.value
        unlearn(full, target, name, **fields(m.Params, CHEAP_METHOD))
        peak.sample()
        peak.active = False
        print(f"| {name} | {m.kind} | {peak.value / model_bytes:.2f}x (from {start / model_bytes:.2f}x) |", flush=True)

    # with --lora the attacks measure a LoRA-unlearned model (adapters over the shared base)
    unlearned = unlearn(full, target, "gradient_ascent", steps=3, **({"lora_r": args.lora} if args.lora else {}))
    gc.collect()
    print(f"\non the device between steps (a study holds the original, the oracle and an unlearned model): "
          f"{live_bytes() / model_bytes:.2f}x")
    print("\n| attack | peak live tensors / model bytes during its measurements |")
    print("|---|---|")
    for name in (args.attacks.split(",") if args.attacks else attack_names()):
        attack = get_attack(name)
        params = attack.params(fields(attack.Params, CHEAP_ATTACK))
        gc.collect()
        peak.value, peak.active, peak.forwards = 0, True, True
        attack.run(full, {"gradient_ascent": unlearned}, oracle, target, params)
        peak.active = peak.forwards = False
        print(f"| {name} | {peak.value / model_bytes:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
