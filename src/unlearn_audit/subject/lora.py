"""LoRA adapters (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models") through
PEFT, the optional ``peft`` extra: ``pip install 'unlearn-audit[peft]'``.

A LoRA copy of a model shares the model's weights (the same storage, frozen) and adds adapters:
``W x + (alpha / r) B A x`` at every targeted linear layer, ``B`` zero at the start, so the copy
computes exactly what the model does until it is trained. Only the adapters train, so a
fine-tuning method or a relearning attack holds one model's weights plus adapters, their
gradients and their optimiser state. Copying a model that carries adapters copies the adapters
and shares the frozen base the same way.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from ..errors import UserInputError
from ..params import LoraSettings

__all__ = ["LoraSettings", "adapter_parameters", "base_model", "copy_adapters", "copy_sharing", "is_peft",
           "merged", "merged_in_place", "plain_parameters", "require_peft", "with_lora"]


def is_peft(model) -> bool:
    """Whether ``model`` is a PEFT wrapper (``PeftModel``) around a base model."""
    return hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None))


def base_model(model):
    """The Hugging Face model inside a PEFT wrapper, with the adapters in its modules (hooks
    and module paths resolve on it); any other model as it is."""
    return model.get_base_model() if is_peft(model) else model


def require_peft():
    try:
        import peft
    except ImportError:
        raise UserInputError("LoRA (lora_r > 0, or a model with adapters) needs PEFT: "
                             "pip install 'unlearn-audit[peft]'") from None
    return peft


def copy_sharing(model: torch.nn.Module, shared: Callable[[torch.nn.Parameter], bool]) -> torch.nn.Module:
    """A deep copy of ``model`` whose parameters for which ``shared(p)`` holds use the same
    storage as the model's (new Parameter objects, so ``requires_grad`` stays each one's own)."""
    memo = {id(p): torch.nn.Parameter(p.data, requires_grad=p.requires_grad)
            for p in model.parameters() if shared(p)}
    return copy.deepcopy(model, memo)


def copy_adapters(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a PEFT model: its trainable adapters copied, its frozen base shared."""
    return copy_sharing(model, lambda p: not p.requires_grad)


def with_lora(model: torch.nn.Module, settings: LoraSettings) -> torch.nn.Module:
    """A LoRA copy of ``model``: its weights shared and frozen, new adapters to train. A model
    that has adapters already gets a copy of them (trained further), not a second set."""
    peft = require_peft()
    if is_peft(model):
        return copy_adapters(model)
    targets = settings.targets if isinstance(settings.targets, str) else list(settings.targets)
    config = peft.LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                             target_modules=targets, bias="none", task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():  # PEFT calls a transformers API that transformers 5 deprecates
            warnings.simplefilter("ignore", FutureWarning)
            return peft.get_peft_model(copy_sharing(model, lambda p: True), config)
    except ValueError as e:  # no module matches the targets
        raise UserInputError(f"lora_targets {settings.targets!r}: {str(e).splitlines()[0]}") from None


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """A PEFT model's adapters merged into a copy of its base (the shared base is untouched):
    a whole model, every weight trainable again, as a loaded one is."""
    if not is_peft(model):
        return model
    whole = copy.deepcopy(model).merge_and_unload()
    whole.requires_grad_(True)
    return whole


@contextmanager
def merged_in_place(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """A PEFT model with its adapters merged into its base weights for the block (PEFT's
    ``merge_adapter``: the same ``W + (alpha / r) B A`` as :func:`merged`, without a copy of the
    model); the base weights, which other models share, are restored bit for bit when the block
    ends, from a copy kept off the device meanwhile (``subject/residency.py``). Any other model
    as it is."""
    if not is_peft(model):
        yield model
        return
    from . import residency

    layers = [m for m in model.modules() if hasattr(m, "lora_A") and callable(getattr(m, "get_base_layer", None))]
    saved = residency.park({str(i): m.get_base_layer().weight.detach() for i, m in enumerate(layers)}, copy=True)
    try:
        with torch.no_grad():
            model.merge_adapter()
        yield model
    finally:
        with torch.no_grad():
            model.unmerge_adapter()  # PEFT's own state (which adapters are merged) back to none
            for i, m in enumerate(layers):
                m.get_base_layer().weight.copy_(saved.get(str(i)))


def plain_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """``named_parameters`` as the model without adapters names them: a PEFT model's adapter
    parameters left out and its wrapped layers' weights under their own names (so that a LoRA
    subject's weights line up with the original's; merged first, they are its whole weights).
    Tied weights appear once."""
    if not is_peft(model):
        return dict(model.named_parameters())
    return {n.replace(".base_layer.", "."): p for n, p in base_model(model).named_parameters() if "lora_" not in n}


def adapter_parameters(model: torch.nn.Module, module: torch.nn.Module | None = None) -> list[torch.nn.Parameter]:
    """The trainable adapter parameters of ``model`` (of one of its modules when given)."""
    return [p for n, p in (module or model).named_parameters() if "lora_" in n and p.requires_grad]
