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

A study (``experiment/runner.py``) runs inside :func:`off_device_at_rest`: there no model is on
its device between steps, and every step names the models it computes with (evaluation, method
runs, attack setups and measurements do).

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
from torch.utils.weak import WeakIdKeyDictionary

MODES = ("auto", "host", "disk", "none")

_TRACKED: weakref.WeakSet = weakref.WeakSet()  # every Subject's model


class _Group:
    """Parameters that share one storage (tied weights, a LoRA copy's base and the model it was
    copied from), moved off their device together and brought back as one tensor again, so
    that sharing survives the round trip. It holds its parameters weakly: a model discarded
    while away (a cell's unlearned model) frees its host copy and, with the last of its file's
    groups, the file."""

    __slots__ = ("params", "device", "file", "key", "host", "__weakref__")

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params, self.device = [weakref.ref(p) for p in params], params[0].device
        self.file: _SpillFile | None = None
        self.key, self.host = "", None


class _SpillFile:
    """A temporary safetensors file of offloaded tensors; deleted when the last is taken back."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        from safetensors.torch import save_file

        fd, self.path = tempfile.mkstemp(prefix="unlearn-audit-offload-", suffix=".safetensors",
                                         dir=os.environ.get("UNLEARN_AUDIT_OFFLOAD_DIR") or None)
        os.close(fd)
        weakref.finalize(self, _unlink, self.path)  # also when its groups are discarded away
        save_file({k: t.detach().contiguous() for k, t in tensors.items()}, self.path)
        self.left = len(tensors)

    def take(self, key: str, device: torch.device) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self.path, "pt", device=str(device)) as f:
            t = f.get_tensor(key)
        self.left -= 1
        if self.left == 0:
            _unlink(self.path)
        return t


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# parameter -> the group it is away with; keyed by identity and held weakly (a parameter that
# dies while away is forgotten, and its id may be reused by a new one)
_AWAY = WeakIdKeyDictionary()


def _storage(p: torch.nn.Parameter) -> tuple:
    """Parameters with equal keys are views of one storage in the same place."""
    return (p.untyped_storage().data_ptr(), p.storage_offset(), tuple(p.shape), p.stride(), p.dtype)


def track(model: torch.nn.Module) -> None:
    """Let :func:`resident` move ``model`` off its device (every Subject's model is tracked). A
    model made inside a :func:`resident` block joins it."""
    _TRACKED.add(model)
    _join_block(model)


def mode() -> str:
    value = os.environ.get("UNLEARN_AUDIT_OFFLOAD", "auto").strip().lower() or "auto"
    if value not in MODES:
        from ..errors import UserInputError

        raise UserInputError(f"UNLEARN_AUDIT_OFFLOAD={value!r} is not an offload mode; use one of {', '.join(MODES)}")
    return value


def _params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return list(model.parameters())


def _offload(params: list[torch.nn.Parameter], how: str) -> list[_Group]:
    """Move ``params`` (none of them away) off their device, one group per shared storage;
    returns the groups moved."""
    by_storage: dict[tuple, list[torch.nn.Parameter]] = {}
    for p in params:
        if p.device.type == "meta" or not p.numel() or (how != "disk" and p.device.type == "cpu"):
            continue
        by_storage.setdefault(_storage(p), []).append(p)
    grouped = list(by_storage.values())
    groups = [_Group(ps) for ps in grouped]
    if how == "disk" and groups:
        spill = _SpillFile({str(i): ps[0].data for i, ps in enumerate(grouped)})
        for i, g in enumerate(groups):
            g.file, g.key = spill, str(i)
    for g, ps in zip(groups, grouped, strict=True):
        if g.file is None:
            g.host = ps[0].data.to("cpu")
        placeholder = torch.empty(0, dtype=ps[0].dtype, device=g.device) if g.file is not None else g.host
        for p in ps:
            _AWAY[p] = g
            p.data = placeholder
    return groups


def _onload(groups: list[_Group]) -> None:
    for g in groups:
        alive = [p for r in g.params if (p := r()) is not None]
        t = g.file.take(g.key, g.device) if g.file is not None else g.host.to(g.device)
        for p in alive:
            del _AWAY[p]
            p.data = t
        g.host = None


def _groups_of(params) -> list[_Group]:
    """The groups the away ones of ``params`` are in now (a nested block may have brought a
    group back and moved it off again as a new one)."""
    return list({id(g): g for p in params if (g := _AWAY.get(p)) is not None}.values())


# the open resident() blocks, innermost last: per block, the models it names (weak references:
# a model made inside a block joins it, and a block must not keep a discarded copy alive)
_BLOCKS: list[list[weakref.ref]] = []
_OFF_AT_REST = [0]  # depth of off_device_at_rest() blocks


def _named(block: list[weakref.ref]) -> list[torch.nn.Module]:
    return [m for r in block if (m := r()) is not None]


def _settle(keep: list[torch.nn.Module], how: str) -> None:
    """Of the tracked models, put exactly ``keep`` (and what they share) on their devices."""
    keep_params = [p for m in keep for p in _params(m)]
    _onload(_groups_of(keep_params))
    kept = {_storage(p) for p in keep_params}
    others: dict[int, torch.nn.Parameter] = {}
    for model in list(_TRACKED):
        if not any(model is m for m in keep):
            others.update((id(p), p) for p in _params(model) if p not in _AWAY and _storage(p) not in kept)
    _offload(list(others.values()), how)


def _join_block(model: torch.nn.Module) -> None:
    """A model made inside a block is part of that block's work (a copy being trained): it stays
    on the device until the block ends."""
    if _BLOCKS:
        _BLOCKS[-1].append(weakref.ref(model))


def _restore(how: str) -> None:
    """Put the tracked models where the open blocks say: the innermost resident() block's
    models on their devices; with none open, no model inside off_device_at_rest() and every
    model outside it."""
    if how == "none":
        return
    if _BLOCKS:
        _settle(_named(_BLOCKS[-1]), how)
    elif _OFF_AT_REST[0]:
        _settle([], how)
    else:
        _onload(_groups_of(p for m in list(_TRACKED) for p in _params(m)))


@contextmanager
def resident(*models: torch.nn.Module | None) -> Iterator[None]:
    """A block in which, of the tracked models, only ``models`` (None entries ignored) and the
    models made inside it have their parameters on their device; see the module docstring."""
    how = mode()
    if how == "none":
        yield
        return
    _BLOCKS.append([weakref.ref(m) for m in models if m is not None])
    try:
        _restore(how)
        yield
    finally:
        _BLOCKS.pop()
        _restore(how)


@contextmanager
def off_device_at_rest() -> Iterator[None]:
    """A block (a run of a study) in which a tracked model is on its device only inside a
    :func:`resident` block that names it (or in which it was made): between steps no model is,
    so a study's original, oracle and unlearned models never wait on the device together. Every
    step inside must name the models it computes with. When the block ends, every model is back."""
    how = mode()
    _OFF_AT_REST[0] += 1
    try:
        _restore(how)
        yield
    finally:
        _OFF_AT_REST[0] -= 1
        _restore(how)


class Parked:
    """Tensors set aside until needed (see :func:`park`); a file of them is deleted with this."""

    def __init__(self, tensors: dict[str, torch.Tensor], how: str, copy: bool = False):
        self.devices = {k: t.device for k, t in tensors.items()}
        self.shapes = {k: tuple(t.shape) for k, t in tensors.items()}
        self.path = None
        if how == "disk" and tensors:
            from safetensors.torch import save_file

            fd, self.path = tempfile.mkstemp(prefix="unlearn-audit-offload-", suffix=".safetensors",
                                             dir=os.environ.get("UNLEARN_AUDIT_OFFLOAD_DIR") or None)
            os.close(fd)
            weakref.finalize(self, os.unlink, self.path)
            save_file({k: t.detach().contiguous() for k, t in tensors.items()}, self.path)
            self.tensors = {}
        elif how == "none":
            self.tensors = {k: t.detach().clone() if copy else t for k, t in tensors.items()}
        else:
            self.tensors = {k: t.detach().to("cpu", copy=copy) for k, t in tensors.items()}

    def keys(self):
        return self.shapes.keys()

    def get(self, key: str, rows: slice | None = None) -> torch.Tensor:
        """One parked tensor (``rows``: only that slice of its first dimension), on the device it
        came from; only that much is read from a file."""
        device = self.devices[key]
        if self.path is not None:
            from safetensors import safe_open

            with safe_open(self.path, "pt", device="cpu") as f:
                t = f.get_tensor(key) if rows is None else f.get_slice(key)[rows]
            return t.to(device)
        t = self.tensors[key]
        return (t if rows is None else t[rows]).to(device)


def park(tensors: dict[str, torch.Tensor], copy: bool = False) -> Parked:
    """Set ``tensors`` aside where offloaded parameters go (host memory, a temporary file under
    ``disk``, nowhere under ``none``): what a step needs one piece at a time and was computed
    from a model that is off the device by then (reference outputs, recorded activations).
    ``copy``: the parked tensors never share memory with ``tensors`` (weights saved before they
    are overwritten in place); otherwise a CPU tensor under ``auto`` is parked as itself."""
    return Parked(tensors, mode(), copy)


def unpark(parked: Parked) -> dict[str, torch.Tensor]:
    """The tensors of :func:`park`, on the devices they came from (as often as asked)."""
    if parked.path is not None:
        from safetensors import safe_open

        with safe_open(parked.path, "pt", device="cpu") as f:
            return {k: f.get_tensor(k).to(d) for k, d in parked.devices.items()}
    return {k: t.to(parked.devices[k]) for k, t in parked.tensors.items()}
