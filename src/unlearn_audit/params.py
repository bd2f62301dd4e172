"""Validating a method's or an attack's parameters into its pydantic model, with one-line errors.

Every numeric parameter carries its bounds in its declaration (``Field(ge=..., le=...)``), and
the base classes refuse NaN and infinity, so a value that cannot give a meaningful number fails
at validation: before any model is loaded, and in an experiment file before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import UserInputError

MAX_SEED = 2**32 - 1      # numpy's seed range
MAX_STEPS = 1_000_000     # the most optimiser steps (or relearning checkpoint) a parameter may ask for


# the batching knobs every fine-tuning method and relearning attack declares (one definition of
# their bounds and help; the classes keep their own field order)
GradAccumSteps = Annotated[int, Field(ge=1, le=1024, description="Micro-batches per optimiser step "
                                      "(effective batch: batch_size x grad_accum_steps).")]
GradientCheckpointing = Annotated[bool, Field(description="Recompute activations in the backward pass "
                                              "(less memory, ~30% more time; Hugging Face models).")]
MaxLength = Annotated[int, Field(ge=8, le=1_048_576, description="Tokens per training text (longer texts are "
                                 "truncated; MUSE and WMDP documents run to 2048).")]


# LoRA, for every fine-tuning method and relearning attack (subject/lora.py; the peft extra)
# the per-item score an attack's recovery and residual are computed on (metrics/itemwise.py):
# declared by the relearning attacks and quantize
ItemMetric = Annotated[Literal["exact_match", "answer_prob", "rouge_l", "truth_ratio", "mc_accuracy"], Field(
    description="Per-item score that recovery and residual are computed on: exact_match, answer_prob, rouge_l, "
                "truth_ratio (tofu:/world: targets), mc_accuracy (wmdp: targets); metrics/itemwise.py.")]
MaxNewTokens = Annotated[int, Field(ge=1, le=4096, description="Tokens generated per answer for metric rouge_l.")]

LoraR = Annotated[int, Field(ge=0, le=4096, description="LoRA rank: train adapters of this rank on frozen, shared "
                             "weights (0: full fine-tuning). Needs the peft extra.")]
LoraAlpha = Annotated[float | None, Field(gt=0, description="LoRA scale numerator: the update is (lora_alpha / "
                                          "lora_r) B A (default: 2 x lora_r).")]
LoraDropout = Annotated[float, Field(ge=0, lt=1, description="Dropout on the LoRA branch's input.")]
LoraTargets = Annotated[list[str] | None, Field(description="Module names that get adapters, e.g. [q_proj,v_proj] "
                                                "(default: every linear layer but the output head).")]


@dataclass(frozen=True)
class LoraSettings:
    """What a method's or an attack's ``lora_*`` parameters ask for (used by ``subject/lora.py``)."""

    r: int
    alpha: float
    dropout: float = 0.0
    targets: str | tuple[str, ...] = "all-linear"


def lora_settings(params: BaseModel) -> LoraSettings | None:
    """The ``LoraSettings`` of a Params object's ``lora_*`` fields, or None for full fine-tuning
    (and for parameters that have no LoRA fields: guardrails, edits)."""
    if not getattr(params, "lora_r", 0):
        return None
    return LoraSettings(params.lora_r, params.lora_alpha or 2.0 * params.lora_r, params.lora_dropout,
                        tuple(params.lora_targets) if params.lora_targets else "all-linear")


def train_settings(params: BaseModel) -> dict[str, Any]:
    """The ``TrainConfig`` keyword arguments that a Params object's batching knobs set."""
    return {"grad_accum_steps": params.grad_accum_steps, "gradient_checkpointing": params.gradient_checkpointing}


_warned: set[tuple[str, str]] = set()


def renamed_params(renamed: Mapping[str, str], data: Any, what: str) -> Any:
    """``data`` with each old parameter name of ``renamed`` (old -> new) moved to its new name,
    warning once per process; giving both names is an error. For a ``mode="before"`` validator."""
    if not isinstance(data, Mapping):
        return data
    data = dict(data)
    for old, new in renamed.items():
        if old in data:
            if new in data:
                raise ValueError(f"give {new!r} only ({old!r} is its old name)")
            if (what, old) not in _warned:
                from . import progress

                _warned.add((what, old))
                progress.warn(f"the {what} parameter {old!r} is now called {new!r}; the old name will go")
            data[new] = data.pop(old)
    return data


def scope_params(values: Mapping[str, Any], names: Sequence[str], fields: Callable[[str], Iterable[str]],
                 what: str = "attack") -> dict[str, dict[str, Any]]:
    """Command-line parameters for several attacks: ``rtt.checkpoints`` goes to ``rtt`` only; a
    key without a scope goes to every one of ``names`` that has such a parameter (``fields(name)``),
    and is an error when none has. A scoped value wins over an unscoped one."""
    out: dict[str, dict[str, Any]] = {n: {} for n in names}
    scoped = {k: v for k, v in values.items() if "." in k}
    for key, value in values.items():
        if key in scoped:
            continue
        takers = [n for n in names if key in set(fields(n))]
        if not takers:
            raise UserInputError(f"--param {key}: no {what} of {', '.join(names)} has a parameter {key!r}; "
                                 f"see `unlearn-audit {what}s`")
        for n in takers:
            out[n][key] = value
    for key, value in scoped.items():
        scope, _, field = key.partition(".")
        if scope not in out:
            raise UserInputError(f"--param {key}: {scope!r} is not one of the {what}s run here ({', '.join(names)})")
        out[scope][field] = value
    return out


def validate_params(model: type[BaseModel], values: Mapping[str, Any] | None, what: str) -> BaseModel:
    """``model(**values)``; the first validation error becomes a :class:`UserInputError` naming
    ``what`` (e.g. ``"method 'npo'"``), the key and, for an unknown key, the valid ones.
    Strings (from the CLI) are coerced by pydantic; an instance of ``model`` is validated
    already and is returned as it is (parameters are validated once, then carried as objects)."""
    if isinstance(values, model):
        return values
    try:
        return model(**dict(values or {}))
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"]) or "?"
        if err["type"] == "extra_forbidden":
            raise UserInputError(f"{what} has no parameter {key!r}; its parameters: "
                                 + ", ".join(model.model_fields)) from None
        raise UserInputError(f"{what} parameter {key!r}: {err['msg'].removeprefix('Value error, ')}") from None


class UtilityConfig(BaseModel):
    """``utility:`` of an experiment file: lm-eval tasks scored on every model (metrics/utility.py)."""

    model_config = ConfigDict(extra="forbid")
    lm_eval: list[str] = Field(min_length=1, description="lm-eval task names, e.g. [mmlu, arc_easy].")
    limit: float | None = Field(None, gt=0, description="Documents per task: a count (>= 1) or a fraction (< 1); "
                                "default all.")
    num_fewshot: int | None = Field(None, ge=0, le=100, description="Few-shot examples (default: each task's own).")
    batch_size: int = Field(8, ge=1, le=4096)
    include_path: str | None = Field(None, description="A directory of your own task YAML files.")
    seed: int = Field(1234, ge=0, description="lm-eval's random, numpy, torch and few-shot seeds.")
