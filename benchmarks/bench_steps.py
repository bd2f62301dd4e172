"""Training-step speed and memory of every fine-tuning method, as MFU of the measured matmul peak.

- matmul peak: median GFLOP/s of a 1024x1024 fp32 ``torch.mm`` (2 n^3 flops), at the thread
  count used below, so every step time is also an MFU;
- per-method step time on the *reference shape* (a random Llama, hidden 128, 4 layers, 4 heads,
  MLP 344, vocab 442, untied: 904,832 parameters; batches of 4 QA rows x 44 tokens with the loss
  on the last 12, plus a retain batch of the same shape for methods with a retain term; AdamW
  lr 1e-5, clip 1.0) through the real pipeline (``FineTuneMethod.stream`` + the shared
  ``train`` loop), after a warm-up run: median over steps 2..N of several runs, in each of
  ``--processes`` fresh processes (step times move ~15% between processes; the table gives the
  median over processes and their range), MFU = 6 * params * tokens / time / peak (tokens of every forward with gradients, as batched: forget, retain
  and DPO's chosen side);
- the same on the default organism (its real forget/retain data, batch 16);
- peak memory of a process that unlearns with each method on a 25M-parameter Llama, relative to
  gradient difference, each in its own process: RSS on CPU, ``torch.cuda.max_memory_allocated``
  with the model on the GPU when one is present. Every method holds the original and the
  unlearned copy; a reference costs nothing extra when its log-probs are precomputed or the
  frozen original is reused. NPO+GD with a deep-copied frozen reference is the contrast;
- CLI start-up: ``unlearn-audit --help`` and a 20-step ``unlearn`` on the reference shape (which
  also evaluates before and after), next to the same 20 steps as a plain script without
  evaluation (``plain_loop.py``), by hyperfine when installed (else a median of 5 runs).

    .venv/bin/python benchmarks/bench_steps.py [--threads 2] [--steps 30] [--repeats 3] [--processes 3]
        [--skip reference,organism,memory,cli]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("UNLEARN_AUDIT_PROGRESS", "0")
ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "unlearn-audit")
METHODS = ("gradient_ascent", "gradient_difference", "kl", "npo", "npo_gd", "npo_kl", "simnpo", "dpo", "rmu")
REF_ROWS, REF_LEN, REF_ANSWER = 4, 44, 12


def matmul_peak(threads: int, n: int = 1024, repeats: int = 20) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def reference_subject(tmp: Path | None = None):
    """The reference shape: a random Llama with a 442-token vocabulary, optionally saved."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from unlearn_audit.organisms import train_tokenizer
    from unlearn_audit.subject.subject import Subject
    from unlearn_audit.world import build_world, corpus, world_config

    tok = train_tokenizer(corpus(build_world(world_config("micro", 0))), 442)
    config = LlamaConfig(vocab_size=442, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
                         max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    subject = Subject(LlamaForCausalLM(config), tok, "reference-shape", answer_eos=True)
    if tmp is not None:
        subject.save(tmp)
    return subject


def synthetic_qa(n: int, vocab: int, seed: int) -> dict:
    """``n`` rows of ``REF_LEN`` random tokens, the loss on the last ``REF_ANSWER``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (n, REF_LEN), generator=g)
    labels = ids.clone()
    labels[:, :REF_LEN - REF_ANSWER] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _tokens(batch: dict) -> int:
    """Tokens that go through a forward pass with gradients in one step's batch."""
    n = 0
    for part in batch.values():
        n += int(part["input_ids"].numel()) + (_tokens({"c": part["chosen"]}) if "chosen" in part else 0)
    return n


def run_steps(method, params, subject, forget: dict, retain: list[dict], steps: int, seed: int, target=None,
              reference=None, wrap=None, on_batch=None) -> list[float]:
    """Seconds of every step (the first included) of one seeded run of ``method`` through
    ``FineTuneMethod.stream`` and the shared ``train`` loop, on a copy of ``subject``.

    ``reference`` defaults to the original model; ``wrap`` turns the trained model into the
    module the loss calls (``torch.compile``; it shares the parameters); ``on_batch`` sees every
    batch before it is used.
    """
    from unlearn_audit.training import TrainConfig, train

    work = subject.copy()
    model = work.model
    reference = subject.model if reference is None else reference
    forward = wrap(model) if wrap else model
    batches = method.stream(forget, retain, params, reference, work.device, subject.tokenizer.pad_token_id)
    if on_batch is not None:
        batches = _seen(batches, on_batch)
    method.setup(subject, target, params)
    marks: list[float] = []
    start = time.perf_counter()
    train(model, lambda b: method.loss(forward, b, reference, params), batches,
          TrainConfig(steps=steps, lr=params.lr, max_grad_norm=1.0, seed=seed),
          parameters=method.trainable(model, params),
          on_step=lambda s, loss: marks.append(time.perf_counter()))
    return [b - a for a, b in zip([start, *marks[:-1]], marks, strict=True)]


def _seen(batches, on_batch):
    for b in batches:
        on_batch(b)
        yield b


def step_times(method_name: str, subject, forget: dict, retain: list[dict], overrides: dict, steps: int,
               repeats: int, target=None, frozen_copy: bool = False) -> tuple[float, float, float]:
    """(median step seconds, max-min spread over runs, mean tokens with gradients per step).

    ``target`` is only needed by methods whose setup reads it (RMU without an absolute
    ``steering_coeff``). ``frozen_copy`` deep-copies the model as the reference first, the way
    frameworks without precomputed reference log-probs do (for the memory contrast only).
    """
    import copy

    from unlearn_audit.methods import get_method

    method = get_method(method_name)
    params = method.params({**overrides, "steps": steps})
    times, tokens = [], []
    for r in range(repeats):
        reference = copy.deepcopy(subject.model).eval() if frozen_copy else None
        deltas = run_steps(method, params, subject, forget, retain, steps, r, target, reference,
                           on_batch=lambda b: tokens.append(_tokens(b)))
        times.append(statistics.median(deltas[1:]))  # first step excluded
    return statistics.median(times), max(times) - min(times), statistics.mean(tokens)


def organism_data(full, target, name: str) -> tuple[dict, list[dict]]:
    """A method's real forget and retain data on the organism, with its default settings."""
    from unlearn_audit.methods import get_method

    method = get_method(name)
    params = method.params({})
    return method.forget_data(full, target, params), method.retain_data(full, target) if method.uses_retain else []


def bench_reference(threads: int, steps: int, repeats: int, peak: float) -> list[dict]:
    import torch

    torch.set_num_threads(threads)
    subject = reference_subject()
    n_params = sum(p.numel() for p in subject.model.parameters())
    forget, retain = synthetic_qa(64, 442, 0), [synthetic_qa(64, 442, 1)]
    step_times("gradient_ascent", subject, forget, [], {"batch_size": REF_ROWS}, 10, 1)  # warm-up
    out = []
    for name in METHODS:
        forget_for = forget
        if name == "dpo":  # a preference pair: a "chosen" side of the same shape
            from unlearn_audit.methods.base import reference_logprobs

            chosen = synthetic_qa(64, 442, 2)
            chosen["ref_logprob"] = reference_logprobs(subject.model, chosen)
            forget_for = {**forget, "ref_logprob": reference_logprobs(subject.model, forget), "chosen": chosen}
        overrides = {"batch_size": REF_ROWS, "lr": 1e-5, **({"steering_coeff": 5.0} if name == "rmu" else {})}
        median, spread, tokens = step_times(name, subject, forget_for, retain, overrides, steps, repeats)
        out.append({"method": name, "ms": median * 1e3, "spread_ms": spread * 1e3,
                    "mfu": None if name == "rmu" else 6 * n_params * tokens / median / (peak * 1e9)})
    return out


# The issue's reference figures for the same work (plain PyTorch loop / open-unlearning), by
# our method that does that work: its NPO rows carry a retain batch (our npo_gd), and its
# frozen-copy NPO runs a no-grad reference forward per step, as npo_kl does.
ISSUE_FIGURES = {"gradient_ascent": "13.5 / 20.0", "gradient_difference": "24.7 / 29.5",
                 "npo_gd": "24.7 / - (precomputed reference)", "npo_kl": "28.2 / 32.6 (frozen-copy NPO)"}


def reference_over_processes(args) -> list[dict]:
    """The reference-shape table measured in ``args.processes`` fresh processes, each row the
    median over processes (MFU from that median) with the range."""
    runs = []
    for _ in range(args.processes):
        out = subprocess.run([sys.executable, __file__, "--reference-json", "--threads", str(args.threads),
                              "--steps", str(args.steps), "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for i, first in enumerate(runs[0]):
        ms = [run[i]["ms"] for run in runs]
        mid = statistics.median(ms)
        mfu = None if first["mfu"] is None else statistics.median(run[i]["mfu"] for run in runs)
        rows.append({"method": first["method"], "ms": mid, "lo": min(ms), "hi": max(ms), "mfu": mfu})
    return rows


def bench_organism(threads: int, steps: int, repeats: int, peak: float) -> list[dict]:
    import torch

    from unlearn_audit.api import target_for
    from unlearn_audit.organisms import organism

    torch.set_num_threads(threads)
    full, _ = organism("default", 0)
    target = target_for("world:0", full)
    n_params = sum(p.numel() for p in full.model.parameters())
    out = []
    for name in METHODS:
        forget, retain = organism_data(full, target, name)
        median, spread, tokens = step_times(name, full, forget, retain, {}, steps, repeats, target)
        out.append({"method": name, "ms": median * 1e3, "spread_ms": spread * 1e3, "tokens": tokens,
                    "mfu": None if name == "rmu" else 6 * n_params * tokens / median / (peak * 1e9)})
    return out


MEMORY_SHAPE = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8)


def peak_memory_one(name: str, threads: int, frozen_copy: bool = False) -> dict:
    """Peak memory (MB) of a process unlearning 20 steps on a 25M-parameter Llama (100 MB of
    fp32 weights, so a second copy of the model would show): ``rss`` always, and ``cuda``
    (``torch.cuda.max_memory_allocated``) when a GPU is present, where the model then runs."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from unlearn_audit.subject.subject import Subject

    torch.set_num_threads(threads)
    small = reference_subject()
    config = LlamaConfig(vocab_size=442, num_key_value_heads=8, tie_word_embeddings=False, max_position_embeddings=256,
                         pad_token_id=small.tokenizer.pad_token_id, bos_token_id=small.tokenizer.bos_token_id,
                         eos_token_id=small.tokenizer.eos_token_id, **MEMORY_SHAPE)
    torch.manual_seed(0)
    subject = Subject(LlamaForCausalLM(config), small.tokenizer, "memory-shape", answer_eos=True)
    cuda = torch.cuda.is_available()
    if cuda:
        subject.model.to("cuda")
        torch.cuda.reset_peak_memory_stats()
    forget, retain = synthetic_qa(64, 442, 0), [synthetic_qa(64, 442, 1)]
    if name == "dpo":
        from unlearn_audit.methods.base import reference_logprobs

        chosen = synthetic_qa(64, 442, 2)
        chosen["ref_logprob"] = reference_logprobs(subject.model, chosen)
        forget = {**forget, "ref_logprob": reference_logprobs(subject.model, forget), "chosen": chosen}
    from unlearn_audit.methods import get_method

    uses_retain = get_method(name).uses_retain
    step_times(name, subject, forget, retain if uses_retain else [], {"batch_size": REF_ROWS}, 20, 1,
               frozen_copy=frozen_copy)
    return {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cuda": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}


def bench_memory(threads: int) -> list[dict]:
    peaks = {}
    variants = [(m, False) for m in ("gradient_difference", "npo", "npo_gd", "npo_kl", "kl", "dpo")] + [("npo_gd", True)]
    for name, frozen in variants:
        r = subprocess.run([sys.executable, __file__, "--memory-one", name, "--threads", str(threads),
                            *(["--frozen-copy"] if frozen else [])], capture_output=True, text=True, check=True)
        peaks[name + (" (frozen reference copy, for contrast)" if frozen else "")] = \
            json.loads(r.stdout.strip().splitlines()[-1])
    key = "cuda" if peaks["gradient_difference"]["cuda"] is not None else "rss"
    return [{"method": k, "peak_mb": v[key], "kind": key, "vs_gd": v[key] / peaks["gradient_difference"][key]}
            for k, v in peaks.items()]


def timed(cmd: list[str], runs: int = 5) -> dict:
    if shutil.which("hyperfine"):
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            subprocess.run(["hyperfine", "-N", "--warmup", "1", "--runs", str(runs), "--export-json", f.name,
                            " ".join(cmd)], capture_output=True, check=True)
            res = json.loads(Path(f.name).read_text())["results"][0]
        return {"median_s": res["median"], "min_s": res["min"], "max_s": res["max"], "tool": "hyperfine"}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "tool": "perf_counter"}


def bench_cli(threads: int) -> dict:
    from unlearn_audit.data.target import save_target, world_target
    from unlearn_audit.world import build_world, world_config

    tmp = Path(tempfile.mkdtemp())
    try:
        reference_subject(tmp / "model")
        world = build_world(world_config("micro", 0))
        save_target(world_target(world, world.concepts[0].name), tmp / "target")
        unlearn = [CLI, "unlearn", "--subject", str(tmp / "model"), "--target", str(tmp / "target"), "--method",
                   "gradient_ascent", "--param", "steps=20", "--param", "batch_size=4", "--out", str(tmp / "out")]
        plain = [sys.executable, str(Path(__file__).with_name("plain_loop.py")), str(tmp / "model"),
                 str(tmp / "plain-out")]
        return {"help": timed([CLI, "--help"]), "unlearn_20_steps": timed(unlearn, runs=10),
                "plain_script_20_steps (no evaluation)": timed(plain, runs=10)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pct(x: float | None) -> str:
    """MFU as a percentage; RMU runs only part of the model, so 6 * params * tokens overstates it."""
    return "n/a (partial forward)" if x is None else f"{x:.0%}"


def machine() -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: reference,organism,memory,cli")
    ap.add_argument("--memory-one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--frozen-copy", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--processes", type=int, default=3,
                    help="fresh processes for the reference-shape table (step times move ~15%% between processes)")
    ap.add_argument("--reference-json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_one:
        print(json.dumps(peak_memory_one(args.memory_one, args.threads, args.frozen_copy)))
        return
    if args.reference_json:
        print(json.dumps(bench_reference(args.threads, args.steps, args.repeats, matmul_peak(args.threads))))
        return
    skip = set(args.skip.split(","))
    peak = matmul_peak(args.threads)
    print(f"## Step time and memory ({machine()}), {args.threads} threads, {time.strftime('%Y-%m-%d')}\n")
    print(f"fp32 matmul peak (1024^3 torch.mm, median of 20): {peak:.0f} GFLOP/s\n")
    if "reference" not in skip:
        print(f"Reference shape (904,832 params; {REF_ROWS} x {REF_LEN} tokens, +retain where used): in each of "
              f"{args.processes} processes the median of steps 2..{args.steps} over {args.repeats} runs; the "
              "table gives the median over processes and their range:\n")
        print("| method | step ms | range over processes ms | MFU | issue: plain loop / open-unlearning ms |")
        print("|---|---|---|---|---|")
        for r in reference_over_processes(args):
            print(f"| {r['method']} | {r['ms']:.1f} | {r['lo']:.1f}-{r['hi']:.1f} | {_pct(r['mfu'])} | "
                  f"{ISSUE_FIGURES.get(r['method'], '')} |")
        print()
    if "organism" not in skip:
        print("Default organism (its forget/retain data and default batch size; tokens per step as batched, "
              "padding included):\n")
        print("| method | step ms | spread ms | tokens/step | MFU |")
        print("|---|---|---|---|---|")
        for r in bench_organism(args.threads, args.steps, args.repeats, peak):
            print(f"| {r['method']} | {r['ms']:.1f} | {r['spread_ms']:.1f} | {r['tokens']:.0f} | {_pct(r['mfu'])} |")
        print()
    if "memory" not in skip:
        rows = bench_memory(args.threads)
        what = "CUDA max_memory_allocated" if rows[0]["kind"] == "cuda" else "RSS"
        print(f"Peak {what} of a process unlearning 20 steps on a 25M-parameter Llama (hidden 512, 8 layers; "
              "100 MB of weights):\n")
        print(f"| method | peak {what} MB | vs gradient_difference |")
        print("|---|---|---|")
        for r in rows:
            print(f"| {r['method']} | {r['peak_mb']:.0f} | {r['vs_gd']:.3f}x |")
        print()
    if "cli" not in skip:
        cli = bench_cli(args.threads)
        print("CLI wall time (" + cli["help"]["tool"] + ", 5 runs (20-step runs: 10) after a warm-up):\n")
        print("| command | median s | min-max s |")
        print("|---|---|---|")
        for k, v in cli.items():
            print(f"| {k} | {v['median_s']:.2f} | {v['min_s']:.2f}-{v['max_s']:.2f} |")


if __name__ == "__main__":
    main()
