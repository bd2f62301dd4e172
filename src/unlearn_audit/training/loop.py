"""The one training loop: pre-training the organism, every fine-tuning method and relearning.

It owns the optimiser (AdamW), the learning-rate schedule, gradient clipping, the NaN check,
seeding, progress and mixed precision; the caller supplies only ``loss_fn(batch) -> scalar`` and
an iterator of batches (dicts of tensors already on the model's device).

Mixed precision: a model loaded in bfloat16 or float16 keeps its dtype for the forward and
backward passes, and AdamW steps float32 *master* copies of its trainable parameters, which are
rounded back into the model after every step (Micikevicius et al. 2018, "Mixed Precision
Training"). Stepping bf16 weights directly rounds away any update below half a bf16 ulp (2^-9
of the weight): at lr 1e-5 most N(0, 0.02) weights never move. float16 also scales the loss
(``torch.amp.GradScaler``): a step whose gradients overflow is skipped and the scale lowered.
Why masters rather than float32 weights under ``torch.autocast``: see BENCHMARKS.md
("Precision"). A float32 model takes none of these paths.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch

from .. import faults, progress
from ..distributed import check_shared_steps, data_parallel, is_sharded, sum_across, sum_gradients
from ..errors import TrainingDiverged, UserInputError
from .dp import DPSGD

Batch = dict


@dataclass
class TrainConfig:
    """Optimisation settings shared by all fine-tuning.

    Attributes:
        steps: optimiser steps (the loop may stop earlier when ``on_step`` returns True).
        lr: peak learning rate.
        weight_decay: AdamW decoupled weight decay.
        betas: AdamW betas.
        warmup_steps: linear warm-up from 0 to ``lr``.
        schedule: after warm-up, ``constant``, ``linear`` decay to 0, or ``cosine`` to 0.
        max_grad_norm: clip the global gradient norm (None: no clipping).
        seed: seeds torch and the batch order.
        grad_accum_steps: micro-batches per optimiser step; each micro-batch's loss is divided
            by it, so the step's gradient is the mean of the micro-batches' (the effective
            batch is ``batch_size x grad_accum_steps``).
        gradient_checkpointing: recompute activations in the backward pass (Hugging Face
            models' ``gradient_checkpointing_enable``) for the duration of the loop.
    """

    steps: int = 100
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    max_grad_norm: float | None = 1.0
    seed: int = 0
    grad_accum_steps: int = 1
    gradient_checkpointing: bool = False


@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)
    steps: int = 0


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of ``config.lr`` at optimiser step ``step`` (0-based)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    span = max(1, config.steps - config.warmup_steps)
    done = min(1.0, (step - config.warmup_steps) / span)
    if config.schedule == "linear":
        return 1.0 - done
    return 0.5 * (1.0 + math.cos(math.pi * done))


def adamw(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.AdamW:
    """AdamW, with the fused kernel where this torch has one for the parameters' device (about
    10% faster per step on the 2-core CPU, see BENCHMARKS.md); the same update either way."""
    kwargs = dict(lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device or dtype
        return torch.optim.AdamW(params, **kwargs)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def train(
    model: torch.nn.Module,
    loss_fn: Callable[[Batch], torch.Tensor],
    batches: Iterable[Batch],
    config: TrainConfig,
    *,
    parameters: Iterable[torch.nn.Parameter] | None = None,
    on_step: Callable[[int, float], bool | None] | None = None,
    description: str = "training",
    dp: DPSGD | None = None,
) -> TrainLog:
    """Run ``config.steps`` optimiser steps of ``loss_fn`` over ``batches``.

    Args:
        parameters: what to optimise (default: every parameter that requires grad).
        on_step: called after each step with (steps done, loss); returning True stops early.
        dp: DP-SGD (:mod:`.dp`): each batch's gradient is its clipped, noised per-example sum
            instead of ``loss_fn``'s (which is not called); needs float32 parameters, no
            accumulation and ``max_grad_norm=None`` (the clipping is per example).

    In a ``torch.distributed`` group of W processes (``distributed.py``) each step's
    ``grad_accum_steps`` micro-batches are split among them: every process draws every
    micro-batch from ``batches`` (the same seeded stream) and process r computes micro-batches
    r, r + W, .... The gradients are summed across processes (a replicated model) or
    reduce-scattered by FSDP2 (a sharded one), so a step is the one-process step up to the order
    of the float sums, and every process steps the same weights.
    Raises:
        TrainingDiverged: the loss or gradient norm became NaN/inf; ``.log`` keeps the losses.
    """
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise UserInputError(f"learning rate must be a positive number, not {config.lr}")
    if config.steps < 0:
        raise UserInputError(f"steps must be >= 0, not {config.steps}")
    if config.grad_accum_steps < 1:
        raise UserInputError(f"grad_accum_steps must be >= 1, not {config.grad_accum_steps}")
    if dp is not None and (config.grad_accum_steps != 1 or config.max_grad_norm is not None):
        raise UserInputError("DP-SGD clips per example: set grad_accum_steps=1 and max_grad_norm=None")
    rank, world = data_parallel()
    if world > 1 and dp is not None:
        raise UserInputError(f"DP-SGD runs in one process, not {world}")
    check_shared_steps(config.grad_accum_steps)
    sharded = world > 1 and is_sharded(model)
    params = [p for p in (parameters if parameters is not None else model.parameters()) if p.requires_grad]
    own = list(params)  # the model's own (the masters get their gradients from these)
    masters = MasterWeights(params)
    params = masters.optimised
    optimizer = adamw(params, config)
    scaler = masters.scaler()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    log = TrainLog()
    was_training = model.training
    model.train()
    checkpointing = config.gradient_checkpointing and _checkpointing(model, True)
    iterator: Iterator[Batch] = iter(batches)
    k = config.grad_accum_steps
    try:
        with progress.bar(description, config.steps) as bar:
            for step in range(config.steps):
                optimizer.zero_grad(set_to_none=True)
                value = 0.0
                if dp is not None:
                    value = dp.set_gradients(model, params, next(iterator))
                    if not math.isfinite(value):
                        raise TrainingDiverged(f"{description}: loss became {value} at step {step + 1} "
                                               f"(lr={config.lr:g}); lower the learning rate", log.losses)
                for j in range(k if dp is None else 0):  # k = 1: one batch, its loss as it is
                    batch = next(iterator)
                    if j % world != rank:  # another process's micro-batch
                        continue
                    loss = loss_fn(batch)
                    micro = float(loss.detach())
                    if k > 1:
                        loss = loss / k
                        micro /= k
                    if sharded:  # FSDP2 averages the processes' gradients: undo the 1/W
                        loss = loss * world
                    scaler.scale(loss).backward()
                    value += micro
                if world > 1:  # the step's loss over every process: each of them raises below, or none
                    value = float(sum_across(torch.tensor(value, dtype=torch.float64)))
                if not math.isfinite(value):
                    raise TrainingDiverged(
                        f"{description}: loss became {value} at step {step + 1} (lr={config.lr:g}); "
                        "lower the learning rate or keep gradient clipping on", log.losses)
                if world > 1 and not sharded:
                    sum_gradients(own)
                masters.take_grads()
                scaler.unscale_(optimizer)
                if config.max_grad_norm is not None:
                    norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                    # under float16 an overflow is the scaler's to handle: the step is skipped
                    if not torch.isfinite(norm) and not scaler.is_enabled():
                        raise TrainingDiverged(
                            f"{description}: gradient norm became {float(norm)} at step {step + 1} "
                            f"(lr={config.lr:g}); lower the learning rate", log.losses)
                scaler.step(optimizer)
                scaler.update()
                masters.copy_back()
                scheduler.step()
                faults.point("step")
                log.losses.append(value)
                log.steps = step + 1
                bar.advance(info=f"loss {value:.3f}")
                if on_step is not None and on_step(step + 1, value):
                    break
    finally:
        # the last step's gradients would otherwise stay on the parameters: one more model's
        # worth of memory for as long as the trained model lives
        optimizer.zero_grad(set_to_none=True)
        masters.free()
        model.train(was_training)
        if checkpointing:
            _checkpointing(model, False)
    return log


class MasterWeights:
    """float32 master copies of the bfloat16/float16 parameters being trained (none for
    float32 ones, which the optimiser steps as they are).

    ``optimised`` is what AdamW steps: each low-precision parameter's master, every other
    parameter itself. ``take_grads`` moves the model's gradients onto the masters one
    parameter at a time, freeing each low-precision gradient as its float32 copy is made;
    ``copy_back`` rounds the stepped masters into the model (round to nearest even).
    """

    LOW = (torch.bfloat16, torch.float16)

    def __init__(self, params: list[torch.nn.Parameter]):
        self.pairs = [(p, p.detach().float()) for p in params if p.dtype in self.LOW]
        by_id = {id(p): m for p, m in self.pairs}
        self.optimised = [by_id.get(id(p), p) for p in params]

    def scaler(self) -> torch.amp.GradScaler:
        """A loss scaler, enabled when any parameter is float16 (bf16 has float32's range); a
        disabled one passes the loss and the step through unchanged."""
        fp16 = [p for p, _ in self.pairs if p.dtype == torch.float16]
        return torch.amp.GradScaler(fp16[0].device.type if fp16 else "cpu", enabled=bool(fp16))

    def take_grads(self) -> None:
        for p, m in self.pairs:
            m.grad = None if p.grad is None else p.grad.float()
            p.grad = None

    @torch.no_grad()
    def copy_back(self) -> None:
        for p, m in self.pairs:
            p.copy_(m)

    def free(self) -> None:
        for p, _ in self.pairs:  # a step cut short may have left the model's own gradients
            p.grad = None
        self.pairs, self.optimised = [], []


def _checkpointing(model, on: bool) -> bool:
    """Switch a Hugging Face model's gradient checkpointing; False for a model without one
    (``activation_checkpointing_*`` in newer transformers, ``gradient_checkpointing_*`` before)."""
    verb = "enable" if on else "disable"
    for name in ("activation", "gradient"):
        switch = getattr(model, f"{name}_checkpointing_{verb}", None)
        if switch is not None:
            switch(**({f"{name}_checkpointing_kwargs": {"use_reentrant": False}} if on else {}))
            return True
    if on:
        progress.warn(f"{type(model).__name__} has no gradient checkpointing; training without it")
    return False


def cycle(batch_fn: Callable[[torch.Generator], Iterable[Batch]], seed: int) -> Iterator[Batch]:
    """Endless epochs: ``batch_fn(generator)`` yields one epoch's batches in a seeded order."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield from batch_fn(generator)


def shuffled_minibatches(data: dict[str, torch.Tensor], batch_size: int, seed: int,
                         device: torch.device | str = "cpu") -> Iterator[Batch]:
    """Endless seeded minibatches of a pre-encoded set (each epoch a new permutation),
    trimmed to their longest row and moved to ``device``."""
    from ..data.encode import take, to_device

    n = data["input_ids"].shape[0]
    size = min(batch_size, n)

    def epoch(gen: torch.Generator):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n - size + 1, size):
            yield to_device(take(data, order[i:i + size]), device)

    return cycle(epoch, seed)
