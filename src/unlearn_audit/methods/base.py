"""The method registry and the base classes every unlearning method derives from.

A method turns a subject and a target into an unlearned subject, never mutating its input.
Fine-tuning methods (:class:`FineTuneMethod`) declare parameters and a loss over
``{"forget", "retain"}`` batches; the shared loop in :mod:`unlearn_audit.training` does the
rest. Methods register by name with :func:`register_method`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from itertools import islice
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from .. import progress
from ..data.encode import concat_batches, encode_qa, encode_texts
from ..errors import UserInputError
from ..metrics.likelihood import IGNORE, forward_logits, sequence_logprob
from ..params import (
    MAX_SEED,
    MAX_STEPS,
    GradAccumSteps,
    GradientCheckpointing,
    LoraAlpha,
    LoraDropout,
    LoraR,
    LoraTargets,
    MaxLength,
    lora_settings,
    train_settings,
    validate_params,
)
from ..registry import Registry
from ..subject import residency
from ..subject.lora import is_peft
from ..subject.residency import resident
from ..subject.subject import Subject
from ..training import TrainConfig, seed_everything, shuffled_minibatches, train


def register_method(name: str):
    """Class decorator: make a method available by ``name`` (a second class under one name is
    an error)."""
    def wrap(cls):
        cls.name = name
        REGISTRY.register(name, cls)
        return cls
    return wrap


def get_method(name: str) -> Method:
    return REGISTRY.lookup(name)()


def method_names() -> list[str]:
    REGISTRY.load()
    return sorted(REGISTRY)


class MethodParams(BaseModel):
    """Parameters of a method (pydantic: unknown keys and bad values are errors)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seeds data order and any randomness of the method.")


class Method:
    """Base class. ``kind`` tells attacks what relearning touches:

    - ``finetune``/``transform``: the intervention is in the weights;
    - ``guardrail``: weights unchanged, inference wrapped (relearning trains under the wrapper).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "finetune"
    Params: ClassVar[type[MethodParams]] = MethodParams

    def params(self, values: Mapping[str, Any] | None = None) -> MethodParams:
        """Validate ``values`` (strings from the CLI are coerced) into this method's Params."""
        return validate_params(self.Params, values, f"method {self.name!r}")

    def run(self, subject: Subject, target, params: MethodParams) -> Subject:
        """The unlearned copy of ``subject`` (never changed itself): a copy named
        ``<subject>+<method>``, changed by :meth:`apply`, with the method's provenance in
        ``info["method"]`` (name, parameters and what ``apply`` returned). Methods implement
        ``apply``, not this."""
        if is_peft(subject.model) and self.kind != "guardrail":
            raise UserInputError(f"{subject.name} carries LoRA adapters; unlearn a merged model instead "
                                 "(unlearn-audit unlearn ... --merge saves one)")
        lora = lora_settings(params)
        with resident(subject.model):  # and the copy, made inside: both, and no other model
            unlearned = subject.copy(name=f"{subject.name}+{self.name}", lora=lora)
            details = self.apply(unlearned, subject, target, params) or {}
        unlearned.info = {**unlearned.info, "method": {"name": self.name, "params": params.model_dump(), **details}}
        if lora is not None:  # where the saved adapters' base is (subject.save writes adapters only)
            unlearned.info["lora_base"] = subject.path or subject.name
        return unlearned

    def apply(self, unlearned: Subject, original: Subject, target, params: MethodParams) -> dict | None:
        """Unlearn ``target`` in ``unlearned`` (a copy of ``original``, changed in place: weights,
        prompt template or interventions); return details worth recording (JSON values)."""
        raise NotImplementedError


class FineTuneParams(MethodParams):
    steps: int = Field(100, ge=0, le=MAX_STEPS, description="Optimiser steps.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW).")
    batch_size: int = Field(16, ge=1, description="Forget examples per step (retain batches: same size).")
    forget_on: Literal["qa", "text", "both"] = Field(
        "qa", description="Forget data: QA pairs (loss on the answer only), full texts, or both.")
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping (None: off).")
    grad_accum_steps: GradAccumSteps = 1
    gradient_checkpointing: GradientCheckpointing = False
    max_length: MaxLength = 256
    lora_r: LoraR = 0
    lora_alpha: LoraAlpha = None
    lora_dropout: LoraDropout = 0.0
    lora_targets: LoraTargets = None


class RetainParams(FineTuneParams):
    retain_weight: float = Field(1.0, ge=0, description="Weight of the retain term.")


class FineTuneMethod(Method):
    """A loss over ``{"forget": batch, "retain": batch}`` on a copy of the subject.

    Subclasses set ``uses_retain`` (a retain batch is drawn each step only when True) and
    ``needs_reference_logprobs`` (the frozen original's sequence log-probs of every forget
    example are computed once, before training, and ride along in each batch as
    ``ref_logprob``). What else a loss needs of the frozen original on a batch (KL's retain
    logits, RMU's frozen activations) comes from :meth:`reference_outputs`, computed for every
    batch the run will draw before its first step. So the original is not used while its copy
    trains: it is off the device for the whole run (``subject/residency.py``), and no second
    copy of the model is ever made.
    """

    kind = "finetune"
    Params = FineTuneParams
    uses_retain: ClassVar[bool] = False
    needs_reference_logprobs: ClassVar[bool] = False

    def loss(self, model, batch: dict, reference, params) -> torch.Tensor:
        raise NotImplementedError

    def setup(self, subject: Subject, target, params) -> None:
        """Per-run state the loss needs beyond the batches (RMU's random target vector)."""

    def reference_outputs(self, reference, batch: dict, params) -> dict[str, dict[str, torch.Tensor]] | None:
        """What the frozen ``reference`` computes on one training batch for the loss, as
        ``{part: {key: tensor}}`` merged into ``batch[part]`` (e.g. ``{"retain": {"ref_logits":
        ...}}``); None (the default): nothing. The loss must compute the same thing live when
        the key is absent (tests compare the two)."""
        return None

    def trainable(self, model, params) -> list[torch.nn.Parameter] | None:
        """The parameters to update (None: all of them); RMU updates a few layers only."""
        return None

    # -- data --------------------------------------------------------------------------
    def forget_data(self, subject: Subject, target, params) -> dict[str, torch.Tensor]:
        """The forget set, encoded; methods with paired data (DPO) override this."""
        forget_on = params.forget_on
        parts = []
        if forget_on in ("qa", "both"):
            parts.append(encode_qa(subject.tokenizer, target.all_forget_qa, subject.prompt, subject.answer_eos))
        if forget_on in ("text", "both"):
            if not target.forget_text:
                raise UserInputError("forget_on=text needs texts in forget.jsonl; use forget_on=qa")
            parts.append(encode_texts(subject.tokenizer, target.forget_text, params.max_length))
        return concat_batches(*parts, pad_id=subject.tokenizer.pad_token_id)

    @staticmethod
    def retain_data(subject: Subject, target, max_length: int = 256) -> list[dict[str, torch.Tensor]]:
        """The retain set, encoded: QA pairs (answer-only loss) and texts (full loss, at most
        ``max_length`` tokens each), when the target has both."""
        tok, parts = subject.tokenizer, []
        if target.retain_qa:
            parts.append(encode_qa(tok, target.retain_qa, subject.prompt, subject.answer_eos))
        if target.retain_text:
            parts.append(encode_texts(tok, target.retain_text, max_length))
        return parts

    def stream(self, forget: dict, retain: list[dict], params, reference, device, pad_id: int) -> Iterator[dict]:
        """Endless seeded ``{"forget", "retain"}`` batches from encoded sets.

        With several retain parts each retain batch takes an equal share of every part: keeping
        both formats in every batch is what keeps the QA format and the text knowledge of the
        retained concepts intact (on the organism, QA alone broke completions and text alone
        broke the QA format). The frozen ``reference`` model's log-probs of every forget row are
        computed here, once, when the method needs them.
        """
        if self.needs_reference_logprobs:
            forget = {**forget, "ref_logprob": reference_logprobs(reference, forget)}
        forget_it = shuffled_minibatches(forget, params.batch_size, params.seed, device)
        if not self.uses_retain:
            return ({"forget": f} for f in forget_it)
        size = max(1, params.batch_size // len(retain))
        streams = [shuffled_minibatches(p, size, params.seed + 1 + i, device) for i, p in enumerate(retain)]
        retain_it = streams[0] if len(streams) == 1 else \
            (concat_batches(*bs, pad_id=pad_id) for bs in zip(*streams, strict=False))
        return ({"forget": f, "retain": r} for f, r in zip(forget_it, retain_it, strict=False))

    def batches(self, subject: Subject, target, params) -> Iterator[dict]:
        retain = self.retain_data(subject, target, params.max_length) if self.uses_retain else []
        return self.stream(self.forget_data(subject, target, params), retain, params, subject.model,
                           subject.device, subject.tokenizer.pad_token_id)

    # -- run ---------------------------------------------------------------------------
    def apply(self, unlearned: Subject, subject: Subject, target, params) -> dict:
        seed_everything(params.seed)
        self.setup(subject, target, params)
        reference = subject.model
        reference.eval()
        model = unlearned.model
        config = TrainConfig(steps=params.steps, lr=params.lr, weight_decay=params.weight_decay,
                             warmup_steps=params.warmup_steps, schedule=params.schedule,
                             max_grad_norm=params.max_grad_norm, seed=params.seed, **train_settings(params))
        batches = self.batches(subject, target, params)
        if type(self).reference_outputs is not FineTuneMethod.reference_outputs:
            batches = with_reference_outputs(batches, params.steps * params.grad_accum_steps,
                                             lambda b: self.reference_outputs(reference, b, params))
        with resident(model):  # the original (and every other model) off the device while this trains
            log = train(model, lambda b: self.loss(model, b, reference, params), batches, config,
                        parameters=self.trainable(model, params), description=f"unlearning: {self.name}")
        model.eval()
        return {"final_loss": log.losses[-1] if log.losses else None}


def with_reference_outputs(batches: Iterator[dict], n: int,
                           compute: Callable[[dict], dict[str, dict[str, torch.Tensor]] | None]) -> Iterator[dict]:
    """The first ``n`` of ``batches`` (all a run of that many micro-batches draws), each with
    ``compute(batch)`` merged in; every ``compute`` runs now, before the first batch is handed
    out. The outputs wait where offloaded weights go (host memory, or a temporary file under
    ``UNLEARN_AUDIT_OFFLOAD=disk``: ``subject/residency.py``) and come back to the batch's
    device one batch at a time."""
    planned, stored = deque(), deque()
    with progress.bar("reference passes", n) as bar:
        for batch in islice(batches, n):
            with torch.no_grad():
                out = compute(batch) or {}
            stored.append(residency.park({f"{part}/{k}": t for part, d in out.items() for k, t in d.items()}))
            planned.append(batch)
            bar.advance()

    def merged(batch: dict, outputs: dict[str, torch.Tensor]) -> dict:
        batch = dict(batch)
        for name, t in outputs.items():
            part, key = name.split("/", 1)
            batch[part] = {**batch[part], key: t}
        return batch

    def handed_out():
        # each batch is let go of once handed out: the generator keeps no reference to it
        while planned:
            yield merged(planned.popleft(), residency.unpark(stored.popleft()))

    return handed_out()


@torch.no_grad()
def reference_logprobs(model, data: dict[str, torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """``(N,)`` summed log-prob of each row's labelled tokens under the frozen ``model``."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, data["input_ids"].shape[0], batch_size):
        batch = {k: data[k][i:i + batch_size].to(device) for k in ("input_ids", "attention_mask", "labels")}
        out.append(sequence_logprob(model, batch).float().cpu())
    return torch.cat(out)


def nll(model, batch: dict) -> torch.Tensor:
    """Mean NLL per labelled token: the usual language-modelling loss."""
    from ..metrics.likelihood import mean_token_nll

    return mean_token_nll(model, batch)


def retain_kl(model, reference, batch: dict, positions: str = "all") -> torch.Tensor:
    """Retain KL term ``KL(p_ref || p_theta)`` of the next-token distributions.

    ``positions="all"`` (default; TOFU ``dataloader.py`` KL, open-unlearning
    ``compute_kl_divergence``): every position of the batch, pads and the last position included,
    summed KL divided by ``B * T`` (``kl_div(..., reduction="batchmean")`` over the flattened
    ``(B*T, V)`` distributions). ``positions="answer"``: the mean over the positions that predict a
    labelled token only (what this project did before; independent of padding and of the
    prompt's length).
    """
    logits = forward_logits(model, batch)
    if "ref_logits" in batch:  # precomputed (reference_logits, before training)
        ref_logits = batch["ref_logits"].to(logits.device)
    else:
        ref_logits = reference_logits(reference, batch)
    if positions == "all":
        logp = torch.log_softmax(logits.float(), -1).flatten(0, 1)                  # (B*T, V)
        ref_logp = torch.log_softmax(ref_logits.float(), -1).flatten(0, 1)
        return torch.nn.functional.kl_div(logp, ref_logp, log_target=True, reduction="batchmean")
    mask = batch["labels"][:, 1:] != IGNORE
    logits, ref_logits = logits[:, :-1], ref_logits[:, :-1][mask].float()
    logp = torch.log_softmax(logits[mask].float(), -1)
    ref_logp = torch.log_softmax(ref_logits, -1)
    return torch.nn.functional.kl_div(logp, ref_logp, log_target=True, reduction="batchmean")


@torch.no_grad()
def reference_logits(reference, batch: dict) -> torch.Tensor:
    """``(B, T, V)`` logits of the frozen ``reference`` on ``batch``, in its dtype: what
    :func:`retain_kl` compares against, live or precomputed as ``batch["ref_logits"]``."""
    return forward_logits(reference, batch)


def npo_loss(logprob: torch.Tensor, ref_logprob: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO (Zhang et al. 2024): ``-(2/beta) * mean log sigmoid(-beta * (logp - logp_ref))``."""
    return -(2.0 / beta) * torch.nn.functional.logsigmoid(-beta * (logprob - ref_logprob)).mean()


# every module of this package is imported on first lookup, then third-party entry points
REGISTRY = Registry("method", Method, __package__, "unlearn_audit.methods")
