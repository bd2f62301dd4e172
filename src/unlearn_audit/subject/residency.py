"""Which models are on the compute device: the ones a step uses, not every one the study holds.

A cell of a study holds several models (the original, the oracle, the unlearned model, the copy
an attack trains), but each step uses one or two. Inside ``with resident(a, b):`` only the
parameters of ``a`` and ``b`` are on their device: those of every other model a
:class:`~unlearn_audit.subject.subject.Subject` holds are moved off it for the block, and back,
bit for bit, when it ends. A parameter shared with a resident model (the frozen base under LoRA
adapters, tied embeddings) stays. Blocks nest: an inner block brings back what an outer one
moved off, and moves it off again when it ends.

Where parameters go is the offload mode, ``UNLEARN_AUDIT_OFFLOAD``:

- ``auto`` (default) and ``host``: host memory, for parameters on an accelerator; a model on
  the CPU stays where it is (there is no faster memory to free);
- ``disk``: a temporary file (``UNLEARN_AUDIT_OFFLOAD_DIR``, else the system's temporary
  directory), for models on any device, the CPU included: for a model larger than the host's
  memory, and to measure on the CPU what an accelerator would hold
  (``benchmarks/bench_memory.py``);
- ``none``: nothing moves.

A parameter moved to disk is an empty tensor while it is away: code that touches a model outside
the block that names it fails loudly instead of reading stale weights.
"""

from __future__ import annotations

import os
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch

MODES = ("auto", "host", "disk", "none")

_TRACKED: weakref.WeakSet = weakref.WeakSet()  # every Subject's model


class _Away:
    """Where one parameter is while it is off its device."""

    __slots__ = ("param", "device", "file", "key")

    def __init__(self, param: torch.nn.Parameter, file: _SpillFile | None = None, key: str = ""):
        self.param, self.device, self.file, self.key = param, param.device, file, key


class _SpillFile:
    """A temporary safetensors file of offloaded parameters; deleted when the last is back."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        from safetensors.torch import save_file

        fd, self.path = tempfile.mkstemp(prefix="unlearn-audit-offload-", suffix=".safetensors",
                                         dir=os.environ.get("UNLEARN_AUDIT_OFFLOAD_DIR") or None)
        os.close(fd)
        save_file({k: t.detach().contiguous() for k, t in tensors.items()}, self.path)
        self.left = len(tensors)

    def take(self, key: str, device: torch.device) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self.path, "pt", device=str(device)) as f:
            t = f.get_tensor(key)
        self.left -= 1
        if self.left == 0:
            os.unlink(self.path)
        return t


_AWAY: dict[int, _Away] = {}  # id(parameter) -> where it is


def track(model: torch.nn.Module) -> None:
    """Let :func:`resident` move ``model`` off its device (every Subject's model is tracked)."""
    _TRACKED.add(model)


def mode() -> str:
    value = os.environ.get("UNLEARN_AUDIT_OFFLOAD", "auto").strip().lower() or "auto"
    if value not in MODES:
        from ..errors import UserInputError

        raise UserInputError(f"UNLEARN_AUDIT_OFFLOAD={value!r} is not an offload mode; use one of {', '.join(MODES)}")
    return value


def _params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return list(model.parameters())


def _offload(params: list[torch.nn.Parameter], how: str) -> list[torch.nn.Parameter]:
    """Move ``params`` (not yet away) off their device; returns those moved."""
    if how in ("auto", "host"):
        moved = [p for p in params if p.device.type not in ("cpu", "meta")]
        for p in moved:
            _AWAY[id(p)] = _Away(p)
            p.data = p.data.to("cpu")
        return moved
    moved = [p for p in params if p.device.type != "meta" and p.numel()]
    if moved:
        spill = _SpillFile({str(i): p.data for i, p in enumerate(moved)})
        for i, p in enumerate(moved):
            _AWAY[id(p)] = _Away(p, spill, str(i))
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)
    return moved


def _onload(params: list[torch.nn.Parameter]) -> None:
    for p in params:
        away = _AWAY.pop(id(p))
        p.data = away.file.take(away.key, away.device) if away.file is not None else p.data.to(away.device)


@contextmanager
def resident(*models: torch.nn.Module | None) -> Iterator[None]:
    """A block in which, of the tracked models, only ``models`` (None entries ignored) have
    their parameters on their device; see the module docstring."""
    how = mode()
    if how == "none":
        yield
        return
    keep = [m for m in models if m is not None]
    kept = {id(p) for m in keep for p in _params(m)}
    back = [p for m in keep for p in _params(m) if id(p) in _AWAY]  # moved off by an outer block
    back = list({id(p): p for p in back}.values())
    _onload(back)
    away: list[torch.nn.Parameter] = []
    try:
        others: dict[int, torch.nn.Parameter] = {}
        for model in list(_TRACKED):
            if any(model is m for m in keep):
                continue
            for p in _params(model):
                if id(p) not in kept and id(p) not in _AWAY:
                    others[id(p)] = p
        away = _offload(list(others.values()), how)
        yield
    finally:
        _onload(away)
        _offload(back, how)


class Parked:
    """Tensors set aside until needed (see :func:`park`)."""

    def __init__(self, tensors: dict[str, torch.Tensor], how: str):
        self.devices = {k: t.device for k, t in tensors.items()}
        self.file = None
        if how == "disk" and tensors:
            self.file, self.tensors = _SpillFile(tensors), {}
        elif how == "none":
            self.tensors = dict(tensors)
        else:
            self.tensors = {k: t.to("cpu") for k, t in tensors.items()}


def park(tensors: dict[str, torch.Tensor]) -> Parked:
    """Set ``tensors`` aside where offloaded parameters go (host memory, a temporary file under
    ``disk``, nowhere under ``none``): precomputed reference outputs that a training run needs
    one batch at a time."""
    return Parked(tensors, mode())


def unpark(parked: Parked) -> dict[str, torch.Tensor]:
    """The tensors of :func:`park`, on the devices they came from (once for a file)."""
    if parked.file is not None:
        return {k: parked.file.take(k, d) for k, d in parked.devices.items()}
    return {k: t.to(parked.devices[k]) for k, t in parked.tensors.items()}
