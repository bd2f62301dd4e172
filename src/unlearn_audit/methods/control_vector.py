"""Model editing with a control (steering) vector: contrastive activation addition (Rimsky et
al. 2024, "Steering Llama 2 via Contrastive Activation Addition") / representation engineering
(Zou et al. 2023), used to suppress a concept.

    direction = mean_{x in forget prompts} h_L(x) - mean_{x in retain prompts} h_L(x)
    h_L(x) <- h_L(x) - alpha * direction          (at every position, during inference)

where h_L is the residual stream leaving layer L and each mean is over the real tokens of the
prompts (QA prompts in the subject's template, and/or texts). By default the edit is an
inference-time hook that rides along with the subject (copies, saves, relearning: the hook stays
active while the weights underneath are fine-tuned). ``bake=true`` folds it into the weights
instead: adding a constant to the stream after layer L is exactly adding that constant to the
bias of layer L's MLP down projection, so the saved model carries it with no hook (Llama-style
models get zero MLP biases and ``config.mlp_bias = true`` for that).

CAA's multipliers are O(1) times the raw difference vector at a middle layer; our defaults
(layer: the middle, alpha) come from the organism.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..data.encode import concat_batches, encode_qa, encode_texts
from ..errors import UserInputError
from ..subject.interventions import SteeringVector
from ..subject.sites import Site, decoder_layers, module_of, num_layers, token_means
from .base import Method, MethodParams, register_method


class ControlVectorParams(MethodParams):
    layer: int | None = Field(None, ge=0, description="Layer whose output is steered (default: the middle layer).")
    alpha: float = Field(8.0, description="Multiple of the direction subtracted (from the organism sweep).")
    on: Literal["qa", "text", "both"] = Field("both", description="Prompts the means are taken over.")
    bake: bool = Field(False, description="Fold the vector into the down-projection bias instead of a hook.")


def prompts(subject, target, which: str, on: str) -> dict:
    """Encoded prompts (QA: question in the subject's template, answer included) and/or texts."""
    tok = subject.tokenizer
    qa = target.all_forget_qa if which == "forget" else target.retain_qa
    texts = target.forget_text if which == "forget" else target.retain_text
    parts = []
    if on in ("qa", "both") and qa:
        parts.append(encode_qa(tok, qa, subject.prompt, subject.answer_eos))
    if on in ("text", "both") and texts:
        parts.append(encode_texts(tok, texts))
    if not parts:
        raise UserInputError(f"control_vector found no {which} {'QA' if on == 'qa' else 'texts'}; use on=both")
    return concat_batches(*parts, pad_id=tok.pad_token_id)


def bake_into_bias(model, layer: int, shift: torch.Tensor) -> None:
    """Add ``shift`` (d,) to the output bias of layer ``layer``'s MLP down projection."""
    down = module_of(model, Site("mlp_coefficients", layer))
    if getattr(down, "bias", None) is None:
        config = model.config
        if getattr(config, "mlp_bias", None) is not False:
            raise UserInputError(f"bake=true needs an MLP output bias, and {type(model).__name__} has none; "
                                 "use bake=false (the steering hook is saved with the model)")
        # Llama-style: turn on mlp_bias so save/load keeps the bias; every MLP linear needs one
        config.mlp_bias = True
        for block in decoder_layers(model):
            for lin in block.mlp.modules():
                if isinstance(lin, torch.nn.Linear) and lin.bias is None:
                    lin.bias = torch.nn.Parameter(torch.zeros(lin.out_features, device=lin.weight.device,
                                                              dtype=lin.weight.dtype))
    with torch.no_grad():
        down.bias += shift.to(device=down.bias.device, dtype=down.bias.dtype)


@register_method("control_vector")
class ControlVector(Method):
    kind = "transform"
    Params = ControlVectorParams

    def apply(self, out, subject, target, params):
        n = num_layers(subject.model)
        layer = n // 2 if params.layer is None else params.layer
        if not 0 <= layer < n:
            raise UserInputError(f"control_vector layer {layer} out of range: the model has {n} layers")
        site = Site("resid_post", layer)
        direction = (token_means(subject.model, prompts(subject, target, "forget", params.on), [site])[site]
                     - token_means(subject.model, prompts(subject, target, "retain", params.on), [site])[site])
        steer = SteeringVector(layer, direction, params.alpha)
        if params.bake:
            bake_into_bias(out.model, layer, steer.shift(direction))
        else:
            out.add_intervention(steer)
        return {"layer": layer, "direction_norm": float(direction.norm())}
