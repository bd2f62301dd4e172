"""Inference-time interventions: hooks that change how a subject runs without changing its
weights (ECO's embedding corruption; later, unbaked steering vectors).

An intervention rides along with its subject: ``Subject.copy()`` attaches it to the copy,
``Subject.save()`` writes its config (JSON) and tensors (safetensors) next to the weights and
``load_subject`` restores it, and it stays active while relearning fine-tunes the weights
underneath — an attack on a guarded model is an attack *through* the guard.
"""

from __future__ import annotations

from typing import ClassVar

import torch

INTERVENTIONS: dict[str, type[Intervention]] = {}


def register_intervention(cls):
    INTERVENTIONS[cls.kind] = cls
    return cls


class Intervention:
    kind: ClassVar[str] = ""

    def attach(self, model) -> list:
        """Register hooks on ``model``; return their handles."""
        raise NotImplementedError

    def config(self) -> dict:
        return {}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    @classmethod
    def restore(cls, config: dict, tensors: dict[str, torch.Tensor]) -> Intervention:
        raise NotImplementedError


@register_intervention
class EmbeddingCorruption(Intervention):
    """ECO-style guard (Liu et al. 2024, "Large Language Model Unlearning via Embedding-Corrupted
    Prompts"): a linear classifier on the mean input embedding of each sequence flags
    forget-related inputs; flagged sequences get ``strength * noise`` added to their input
    embeddings (a fixed seeded Gaussian pattern, so runs are reproducible).

    During incremental decoding (one new token per call) the flag of the row computed on the
    prompt is reused.
    """

    kind = "embedding_corruption"

    def __init__(self, weight: torch.Tensor, bias: float, threshold: float, strength: float,
                 noise: torch.Tensor, pad_token_id: int | None):
        self.weight, self.bias, self.threshold = weight, float(bias), float(threshold)
        self.strength, self.noise, self.pad_token_id = float(strength), noise, pad_token_id
        self._last_flags: torch.Tensor | None = None

    def flags(self, input_ids: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """(B,) bool: which sequences the classifier flags as forget-related."""
        mask = torch.ones_like(input_ids, dtype=embeds.dtype) if self.pad_token_id is None \
            else (input_ids != self.pad_token_id).to(embeds.dtype)                     # (B, T)
        pooled = (embeds * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, d)
        score = pooled.float() @ self.weight.to(pooled.device) + self.bias
        return torch.sigmoid(score) > self.threshold

    def _hook(self, module, inputs, output):
        input_ids = inputs[0]
        if input_ids.shape[1] > 1 or self._last_flags is None or len(self._last_flags) != len(input_ids):
            self._last_flags = self.flags(input_ids, output)
        flagged = self._last_flags
        if not bool(flagged.any()) or self.strength == 0:
            return output
        t = output.shape[1]
        noise = self.noise[:t].to(device=output.device, dtype=output.dtype)                # (T, d)
        return output + self.strength * flagged[:, None, None].to(output.dtype) * noise[None]

    def attach(self, model) -> list:
        return [model.get_input_embeddings().register_forward_hook(self._hook)]

    def config(self) -> dict:
        return {"bias": self.bias, "threshold": self.threshold, "strength": self.strength,
                "pad_token_id": self.pad_token_id}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "noise": self.noise}

    @classmethod
    def restore(cls, config, tensors):
        return cls(tensors["weight"], config["bias"], config["threshold"], config["strength"],
                   tensors["noise"], config["pad_token_id"])


@register_intervention
class SteeringVector(Intervention):
    """Add ``-alpha * direction`` to the residual stream leaving layer ``layer``, at every
    position (activation steering / contrastive activation addition; the control-vector
    method's unbaked form)."""

    kind = "steering_vector"

    def __init__(self, layer: int, direction: torch.Tensor, alpha: float):
        self.layer, self.direction, self.alpha = int(layer), direction, float(alpha)

    def shift(self, like: torch.Tensor) -> torch.Tensor:
        return (-self.alpha * self.direction).to(device=like.device, dtype=like.dtype)   # (d,)

    def attach(self, model) -> list:
        from .sites import Site, add_hook

        return add_hook(model, Site("resid_post", self.layer), lambda x: x + self.shift(x))

    def config(self) -> dict:
        return {"layer": self.layer, "alpha": self.alpha}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"direction": self.direction}

    @classmethod
    def restore(cls, config, tensors):
        return cls(config["layer"], tensors["direction"], config["alpha"])
