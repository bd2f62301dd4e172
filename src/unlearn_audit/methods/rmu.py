"""Representation Misdirection for Unlearning (Li et al. 2024, "The WMDP Benchmark: Measuring
and Reducing Malicious Use With Unlearning").

At layer L, forget activations are pushed towards a fixed random direction scaled by c and
retain activations are held at the frozen model's:

    L = mean_f || h_L(x_f) - c * u ||^2 / d  +  alpha * mean_r || h_L(x_r) - h_L^frozen(x_r) ||^2 / d

(per-element MSE over every position of the padded batch, pads included, as WMDP's
``rmu/unlearn.py`` computes ``mse_loss`` on the whole activation tensor; ``average_over=real``
averages over the real tokens only, as open-unlearning's ``rmu.py`` nearly does (it masks by
labels and averages per row first). h_L is the residual stream leaving layer L; u is a unit
vector drawn uniformly from [0, 1)^d and normalised, fixed for the run). Only the MLP down
projections of layers L-2..L are updated. The frozen model is the subject itself: its
h_L on every retain batch the run draws is computed before the first step, so it is off the
device while its copy trains, and no second copy is made.

Paper (Zephyr-7B): L = 7 of 32, c = 6.5, alpha = 1200, lr 5e-5, batch 4, ~150 steps, forget and
retain *texts*. Scaling for other models: L defaults to the same relative depth (7/32 of the
layers, at least 1); and since residual norms differ from model to model while c must be large
*relative to them*, c defaults to ``coeff_scale`` times the frozen model's mean token norm of
h_L on the forget texts (set ``steering_coeff`` for an absolute c). Both MSE terms scale with
the squared norm, so alpha keeps its meaning. Defaults below come from the organism.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..data.encode import encode_texts
from ..errors import UserInputError
from ..metrics.likelihood import forward
from ..params import MAX_STEPS
from ..subject.lora import adapter_parameters, is_peft
from ..subject.sites import Site, module_of, num_layers, run_until, token_means
from .base import FineTuneMethod, FineTuneParams, register_method


class RMUParams(FineTuneParams):
    layer: int | None = Field(None, ge=0, description="Layer L whose output is misdirected (default: 7/32 of the depth).")
    steering_coeff: float | None = Field(None, gt=0, description="c, absolute (default: coeff_scale x mean norm of h_L).")
    # coeff_scale, alpha, lr from the sweep on the default organism (BENCHMARKS.md): the paper's
    # alpha 1200 keeps every activation in place there (nothing is forgotten)
    # 4.0 since issue 15 (pads averaged in, as WMDP): the re-run sweep's pick
    coeff_scale: float = Field(4.0, gt=0, description="c relative to the mean token norm of h_L on forget text.")
    alpha: float = Field(10.0, ge=0, description="Weight of the retain term.")
    steps: int = Field(60, ge=0, le=MAX_STEPS)
    lr: float = Field(3e-3, gt=0)
    forget_on: str = Field("text", pattern="^(qa|text|both)$")
    average_over: Literal["all", "real"] = Field(
        "all", description="MSE over every position, pads included (all: WMDP rmu/unlearn.py) or real tokens only.")


def rmu_loss(h_forget, target, h_retain, h_frozen, mask_forget=None, mask_retain=None, alpha: float = 1.0) -> torch.Tensor:
    """Per-element MSE of forget activations to ``target`` (d,) plus ``alpha`` times per-element
    MSE of retain activations to the frozen ones, each averaged over every element (masks None:
    WMDP) or over the real tokens of the masks only.

    Shapes: h_forget (B, T, d), h_retain/h_frozen (B', T', d), masks (B, T) / (B', T') bool.
    """
    if mask_forget is None:
        return ((h_forget - target) ** 2).mean() + alpha * ((h_retain - h_frozen) ** 2).mean()
    forget = ((h_forget[mask_forget] - target) ** 2).mean()
    retain = ((h_retain[mask_retain] - h_frozen[mask_retain]) ** 2).mean()
    return forget + alpha * retain


def _layer_output(model, layer: int, batch: dict) -> torch.Tensor:
    """The residual stream leaving ``layer`` (B, T, d); the layers above it are not run."""
    return run_until(model, Site("resid_post", layer),
                     lambda: forward(model, batch["input_ids"], batch["attention_mask"]))


@register_method("rmu")
class RMU(FineTuneMethod):
    Params = RMUParams
    uses_retain = True

    def resolved_layer(self, model, params) -> int:
        n = num_layers(model)
        layer = max(1, round(7 / 32 * n)) if params.layer is None else params.layer
        if not 0 <= layer < n:
            raise UserInputError(f"rmu layer {layer} out of range: the model has {n} layers")
        return layer

    def trainable(self, model, params):
        layer = self.resolved_layer(model, params)
        band = range(max(0, layer - 2), layer + 1)
        if is_peft(model):  # under LoRA: the adapters of the same three layers' down projections
            return [p for i in band for p in adapter_parameters(model, module_of(model, Site("mlp_coefficients", i)))]
        return [module_of(model, Site("mlp_coefficients", i)).weight for i in band]

    def setup(self, subject, target, params):
        layer = self.resolved_layer(subject.model, params)
        coeff = params.steering_coeff
        if coeff is None:
            texts = target.forget_text or [f"{q.question} {q.answer}" for q in target.all_forget_qa]
            site = Site("resid_post", layer)
            norm = token_means(subject.model, encode_texts(subject.tokenizer, texts, params.max_length), [site],
                               lambda h: h.norm(dim=-1, keepdim=True))[site]
            coeff = params.coeff_scale * float(norm)
        gen = torch.Generator().manual_seed(params.seed)
        u = torch.rand(subject.model.get_input_embeddings().weight.shape[1], generator=gen)
        self._setup = {"layer": layer, "coeff": coeff, "target": coeff * u / u.norm()}  # read by loss()

    def apply(self, unlearned, subject, target, params):
        details = super().apply(unlearned, subject, target, params)
        return {**details, "layer": self._setup["layer"], "steering_coeff": float(self._setup["coeff"])}

    def reference_outputs(self, reference, batch, params):
        return {"retain": {"ref_hidden": _layer_output(reference, self._setup["layer"], batch["retain"])}}

    def loss(self, model, batch, reference, params):
        layer, target = self._setup["layer"], self._setup["target"]
        forget, retain = batch["forget"], batch["retain"]
        h_f = _layer_output(model, layer, forget)
        h_r = _layer_output(model, layer, retain)
        if "ref_hidden" in retain:  # precomputed before training (reference_outputs)
            h_frozen = retain["ref_hidden"].to(h_r.device)
        else:
            with torch.no_grad():
                h_frozen = _layer_output(reference, layer, retain)
        real = params.average_over == "real"
        return rmu_loss(h_f, target.to(h_f.device, h_f.dtype), h_r, h_frozen,
                        forget["attention_mask"].bool() if real else None,
                        retain["attention_mask"].bool() if real else None, params.alpha)

