"""Activation sites: one naming scheme for where in a model an audit reads or writes.

A :class:`Site` is a kind plus a layer, ``Site("mlp_coefficients", 3)``. Kinds:

| kind | what (per token) | shape |
|---|---|---|
| ``resid_pre`` | the residual stream entering layer L | (B, T, d_model) |
| ``resid_post`` | the residual stream leaving layer L | (B, T, d_model) |
| ``attn_out`` | the attention block's output (before it is added to the stream) | (B, T, d_model) |
| ``mlp_out`` | the MLP block's output (before it is added to the stream) | (B, T, d_model) |
| ``mlp_coefficients`` | the input of the MLP down/output projection: one coefficient per neuron | (B, T, d_mlp) |

plus one weight, not an activation: ``mlp_value_vectors`` (the down projection; row i of
:func:`value_vectors` is what neuron i writes into the stream, Geva et al. 2021).

Each architecture family maps the kinds to its Hugging Face modules in a small table
(:data:`ARCHITECTURES`, keyed by ``config.model_type``); other models fall back to the
decoder's layer list and common module names, and an unsupported model gets an error naming
its class. Hooks live only inside ``with hooks(model, {site: fn}):``, which resolves every
site before registering anything and always removes what it registered.

    cache = {}
    with hooks(model, {Site("mlp_coefficients", 1): lambda x: cache.setdefault("c", x.detach())}):
        model(input_ids)
    with hooks(model, {Site("mlp_coefficients", 1): lambda x: cache["c"]}):   # patch it back in
        model(input_ids)

A hook function gets the activation tensor and returns ``None`` (leave it) or a tensor of the
same shape (replace it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..errors import UserInputError
from ..metrics.likelihood import eval_mode, forward
from .lora import base_model

ACTIVATION_KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out", "mlp_coefficients")
WEIGHT_KINDS = ("mlp_value_vectors",)
KINDS = ACTIVATION_KINDS + WEIGHT_KINDS


@dataclass(frozen=True)
class Site:
    kind: str
    layer: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserInputError(f"unknown site {self.kind!r}; choose one of: {', '.join(KINDS)}")

    def __str__(self) -> str:
        return f"{self.kind}.{self.layer}"


@dataclass(frozen=True)
class Architecture:
    """Where the pieces of one decoder layer are, as attribute paths.

    Attributes:
        layers: path from the model to the list of decoder layers.
        attn: path from a layer to its attention module (output: tensor or tuple, first = output).
        mlp: path from a layer to the module whose output is the MLP block's output.
        down: path from a layer to the MLP down/output projection.
        conv1d: the down projection is a GPT-2 ``Conv1D`` (weight stored as (in, out)).
        flat_mlp: the MLP sees tokens flattened to (B*T, d) (OPT); hooks still get (B, T, d).
        final_norm: path from the model to the norm applied before the unembedding.
    """

    layers: str
    attn: str
    mlp: str
    down: str
    conv1d: bool = False
    flat_mlp: bool = False
    final_norm: str = "model.norm"


_LLAMA_LIKE = Architecture("model.layers", "self_attn", "mlp", "mlp.down_proj")
ARCHITECTURES: dict[str, Architecture] = {
    **{t: _LLAMA_LIKE for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "olmo", "olmo2",
                                "gemma", "gemma2", "smollm3", "granite")},
    "phi": Architecture("model.layers", "self_attn", "mlp", "mlp.fc2", final_norm="model.final_layernorm"),
    "phi3": Architecture("model.layers", "self_attn", "mlp", "mlp.down_proj"),
    "gpt2": Architecture("transformer.h", "attn", "mlp", "mlp.c_proj", conv1d=True, final_norm="transformer.ln_f"),
    "gpt_neox": Architecture("gpt_neox.layers", "attention", "mlp", "mlp.dense_4h_to_h",
                             final_norm="gpt_neox.final_layer_norm"),
    "gpt_neo": Architecture("transformer.h", "attn", "mlp", "mlp.c_proj", final_norm="transformer.ln_f"),
    "gptj": Architecture("transformer.h", "attn", "mlp", "mlp.fc_out", final_norm="transformer.ln_f"),
    "opt": Architecture("model.decoder.layers", "self_attn", "fc2", "fc2", flat_mlp=True,
                        final_norm="model.decoder.final_layer_norm"),
    "falcon": Architecture("transformer.h", "self_attention", "mlp", "mlp.dense_4h_to_h", final_norm="transformer.ln_f"),
}

# fallback: names to try, in order, for each part of a layer
_FALLBACK_ATTN = ("self_attn", "attn", "attention", "self_attention")
_FALLBACK_MLP = ("mlp", "feed_forward", "ffn")
_FALLBACK_DOWN = ("down_proj", "c_proj", "dense_4h_to_h", "fc2", "fc_out", "w2", "out_proj")


def _get(obj, path: str):
    obj = base_model(obj)  # a PEFT wrapper's paths are its base model's
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _find(obj, names: tuple[str, ...]) -> str | None:
    for n in names:
        if isinstance(getattr(obj, n, None), torch.nn.Module):
            return n
    return None


def _fallback(model) -> Architecture | None:
    """Find the decoder layers as the longest ModuleList of identical blocks, then the parts
    by common names."""
    best = None
    model = base_model(model)
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0 and (best is None or len(mod) > len(best[1])):
            if len({type(m) for m in mod}) == 1:
                best = (name, mod)
    if best is None:
        return None
    layer = best[1][0]
    attn = _find(layer, _FALLBACK_ATTN)
    mlp = _find(layer, _FALLBACK_MLP)
    if attn is None or mlp is None:
        return None
    down = _find(_get(layer, mlp), _FALLBACK_DOWN)
    if down is None:
        return None
    conv1d = type(_get(layer, f"{mlp}.{down}")).__name__ == "Conv1D"
    return Architecture(best[0], attn, mlp, f"{mlp}.{down}", conv1d)


def architecture(model) -> Architecture:
    """The site table of ``model`` (by ``config.model_type``, else found by the fallback)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    arch = ARCHITECTURES.get(model_type)
    if arch is not None:
        try:
            _get(model, arch.layers)
            return arch
        except AttributeError:
            pass  # e.g. a bare base model without the causal-LM wrapper; try the fallback
    arch = _fallback(model)
    if arch is None:
        raise UserInputError(
            f"unsupported architecture {type(model).__name__} (model_type {model_type!r}): cannot find "
            "its decoder layers, attention, MLP and down projection; add an entry to "
            "unlearn_audit.subject.sites.ARCHITECTURES")
    return arch


def decoder_layers(model) -> torch.nn.ModuleList:
    return _get(model, architecture(model).layers)


def num_layers(model) -> int:
    return len(decoder_layers(model))


def _layer(model, arch: Architecture, layer: int) -> torch.nn.Module:
    layers = _get(model, arch.layers)
    if not -len(layers) <= layer < len(layers):
        raise UserInputError(f"layer {layer} out of range: the model has {len(layers)} layers (0..{len(layers) - 1})")
    return layers[layer]


def module_of(model, site: Site) -> torch.nn.Module:
    """The module a site is read at (for ``mlp_value_vectors``: the down projection)."""
    arch = architecture(model)
    layer = _layer(model, arch, site.layer)
    if site.kind in ("resid_pre", "resid_post"):
        return layer
    if site.kind == "attn_out":
        return _get(layer, arch.attn)
    if site.kind == "mlp_out":
        return _get(layer, arch.mlp)
    return _get(layer, arch.down)  # mlp_coefficients, mlp_value_vectors


def value_vectors(model, layer: int) -> torch.Tensor:
    """``(d_mlp, d_model)`` view of layer ``layer``'s down projection: row i is neuron i's value
    vector. A view: writing into it edits the model (GPT-2's Conv1D stores (in, out) already;
    ``nn.Linear`` stores (out, in), so it is transposed)."""
    arch = architecture(model)
    down = _get(_layer(model, arch, layer), arch.down)
    weight = down.weight
    if hasattr(down, "get_delta_weight"):  # a LoRA layer: its weight is base + adapters (a copy, not a view)
        weight = weight + sum(down.get_delta_weight(a) for a in down.active_adapters if a in down.lora_A)
    return weight if arch.conv1d else weight.T


def unembed(model, resid: torch.Tensor) -> torch.Tensor:
    """Logits of a residual stream vector: the final norm, then the unembedding (the logit lens,
    nostalgebraist 2020). For the last layer's output this is the model's own logits."""
    arch = architecture(model)
    try:
        norm = _get(model, arch.final_norm)
    except AttributeError:
        raise UserInputError(f"{type(model).__name__}: no final norm at {arch.final_norm!r}; "
                             "set final_norm in unlearn_audit.subject.sites.ARCHITECTURES") from None
    return model.get_output_embeddings()(norm(resid))


def d_mlp(model, layer: int = 0) -> int:
    return value_vectors(model, layer).shape[0]


HookFn = Callable[[torch.Tensor], torch.Tensor | None]


def _replace_first(output, new):
    if isinstance(output, tuple):
        return (new, *output[1:])
    return new


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def add_hook(model, site: Site, fn: HookFn) -> list:
    """Register ``fn`` at ``site`` and return the handles; the caller removes them. Prefer
    :func:`hooks`, which always does; this is for interventions that live as long as a model."""
    if site.kind not in ACTIVATION_KINDS:
        raise UserInputError(f"{site} is a weight, not an activation; use patched_weights()")
    module = module_of(model, site)
    handles = []
    arch = architecture(model)
    if arch.flat_mlp and site.kind in ("mlp_out", "mlp_coefficients"):
        # the layer's input tells the (B, T) that the flattened MLP activations unfold into
        shape: list = []

        def remember(mod, args, kwargs):
            shape[:] = (args[0] if args else kwargs["hidden_states"]).shape[:2]

        handles.append(_layer(model, arch, site.layer).register_forward_pre_hook(remember, with_kwargs=True))
        inner = fn

        def fn(x):  # noqa: F811  (the unfolding wrapper of the user's fn)
            if x.dim() != 2:
                return inner(x)
            new = inner(x.view(*shape, x.shape[-1]))
            return None if new is None else new.reshape(x.shape)
    if site.kind in ("resid_pre", "mlp_coefficients"):
        # the module's input: positional (HF passes hidden_states first) or keyword
        def pre(mod, args, kwargs):
            if args:
                new = fn(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = fn(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        return [*handles, module.register_forward_pre_hook(pre, with_kwargs=True)]

    def post(mod, args, output):
        new = fn(_first(output))
        return None if new is None else _replace_first(output, new)

    return [*handles, module.register_forward_hook(post)]


@contextmanager
def hooks(model, fns: Mapping[Site, HookFn]) -> Iterator[None]:
    """Run ``model`` with ``fn(activation)`` at each site; hooks are removed on exit, always.

    Every site is resolved before any hook is registered, so a bad site leaves the model
    untouched. ``mlp_value_vectors`` is a weight, not an activation: use
    :func:`patched_weights` for it.
    """
    for site in fns:
        if site.kind not in ACTIVATION_KINDS:
            raise UserInputError(f"{site} is a weight, not an activation; use patched_weights()")
        module_of(model, site)
    handles = []
    try:
        for site, fn in fns.items():
            handles += add_hook(model, site, fn)
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def patched_weights(model, values: Mapping[int, torch.Tensor | Callable[[], torch.Tensor]]) -> Iterator[None]:
    """Temporarily replace the value vectors of the given layers (``{layer: (d_mlp, d_model)}``,
    or a function returning them, called when that layer is replaced: one layer's new values on
    the device at a time); the original weights are restored on exit, always, bit for bit. They
    wait where offloaded weights go (``subject/residency.py``), not beside the model."""
    from . import residency

    saved = {}
    try:
        with torch.no_grad():
            for layer, new in values.items():
                view = value_vectors(model, layer)
                saved[layer] = residency.park({"w": view}, copy=True)
                view.copy_(new() if callable(new) else new)
        yield
    finally:
        with torch.no_grad():
            for layer, old in saved.items():
                value_vectors(model, layer).copy_(old.get("w"))


class _Stop(Exception):
    """Raised by :func:`run_until`'s hook to end a forward pass early."""


def run_until(model, site: Site, run: Callable[[], object]) -> torch.Tensor:
    """The activation at ``site`` from ``run()`` (a forward pass of ``model``), stopping the pass
    right there: the layers after it are never computed. Gradients flow as usual."""
    out: dict[str, torch.Tensor] = {}

    def stop(x):
        out["x"] = x
        raise _Stop

    try:
        with hooks(model, {site: stop}):
            run()
    except _Stop:
        pass
    if "x" not in out:
        raise UserInputError(f"the forward pass never reached {site}")
    return out["x"]


def record(model, sites, run: Callable[[], object]) -> dict[Site, torch.Tensor]:
    """Run ``run()`` (a forward pass of ``model``) and return the activation at each site, detached."""
    out: dict[Site, torch.Tensor] = {}

    def saver(site):
        def fn(x):
            out[site] = x.detach()
        return fn

    with hooks(model, {s: saver(s) for s in sites}):
        run()
    return out


@torch.no_grad()
def token_means(model, data: Mapping[str, torch.Tensor], sites, transform: Callable = lambda x: x,
                batch_size: int = 32) -> dict[Site, torch.Tensor]:
    """Mean of ``transform(activation)`` over the real tokens of an encoded set, at each site.

    ``data`` holds ``input_ids`` and ``attention_mask`` (N, T); returns {site: (width,)} on the CPU.
    """
    from ..data.encode import take, to_device

    device = next(model.parameters()).device
    totals: dict[Site, torch.Tensor] = {}
    state: dict = {}

    def accumulate(site):
        def fn(x):                                                         # (B, T, width)
            mask = state["mask"].to(x.dtype)[..., None]
            s = (transform(x) * mask).sum((0, 1)).double().cpu()
            totals[site] = totals[site] + s if site in totals else s
        return fn

    count = 0
    with eval_mode(model):
        with hooks(model, {s: accumulate(s) for s in sites}):
            for i in range(0, data["input_ids"].shape[0], batch_size):
                batch = to_device(take({k: data[k] for k in ("input_ids", "attention_mask")},
                                       slice(i, i + batch_size)), device)
                state["mask"] = batch["attention_mask"]
                forward(model, batch["input_ids"], batch["attention_mask"])
                count += int(batch["attention_mask"].sum())
    return {s: (t / max(count, 1)).float() for s, t in totals.items()}
