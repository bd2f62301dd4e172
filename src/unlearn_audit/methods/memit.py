"""Knowledge-editing removal with MEMIT (Meng et al. 2023, "Mass-Editing Memory in a
Transformer"), with the deletion objectives of Patil, Hase & Bansal 2024 ("Can Sensitive
Information Be Deleted From LLMs?") as used by Hong et al. 2024:

- ``memit_empty``: each forget question should be answered with a dummy answer
  (``empty_answer``, default ``"dummy"`` as in Patil et al.);
- ``memit_entropy``: the next-token distribution over the true answer's positions should have
  maximal entropy (teacher-forced on the true answer).

For every forget QA pair (edit request i) MEMIT

1. finds the subject's last token s_i in the prompt (the entity's name where the data names
   one, else the prompt's last token) and the residual stream leaving the band's last layer
   L there, h_i;
2. optimises a vector delta_i added to h_i so that the objective holds (Adam, ``v_steps`` at
   ``v_lr``, penalty ``v_weight_decay * |delta| / |h|^2`` as in MEMIT's ``compute_z.py``
   (``penalty=squared``: the scale-free ``|delta|^2 / |h|^2``), |delta| clamped to
   ``clamp_norm * |h|``): the target z_i = h_i + delta_i;
3. spreads z - h over the band's layers l (ascending): with keys K (MLP coefficients at s_i,
   n x d_mlp, recomputed under the weights edited so far), residuals
   R = (z - h_L(current)) / (L - l + 1) and C_l = E[k k^T] over general text,

       V_l <- V_l + (lambda * C_l + K^T K)^{-1} K^T R

   where V_l is layer l's down projection as value vectors (d_mlp x d): the least-squares
   update that maps each key to its residual while disturbing other keys as little as
   lambda * C_l weighs them.

What is MEMIT and what is not: steps 1-3 are MEMIT's batched multi-layer update. Not
implemented: averaging keys and z over random context prefixes, and the KL "essence"
regulariser of z; the covariance comes from the target's retain/unrelated texts instead of
100k Wikipedia samples. Paper settings (GPT-J, 28 layers): band 3-8, v_lr 0.5, 25 steps,
weight decay 0.5, clamp 0.75, lambda 15000. Band default here: the same relative depth (0.1-0.3
of the layers).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field

from .. import progress
from ..data.encode import IGNORE, encode_qa, encode_texts, render_prompt, take
from ..errors import UserInputError
from ..metrics.likelihood import forward_logits, token_logprobs
from ..params import MAX_STEPS
from ..subject.sites import Site, hooks, num_layers, record, value_vectors
from ..world import QA
from .base import Method, MethodParams, register_method


class MEMITParams(MethodParams):
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1, description="Band of layers edited (default: 0.1-0.3 of the depth).")
    v_steps: int = Field(25, ge=1, le=MAX_STEPS, description="Optimisation steps for each target vector z.")
    v_lr: float = Field(0.5, gt=0, description="Adam learning rate for delta.")
    v_weight_decay: float = Field(0.5, ge=0, description="Weight of the penalty on delta.")
    penalty: Literal["memit", "squared"] = Field(
        "memit", description="Penalty on delta: |delta| / |h|^2 (memit: MEMIT compute_z.py) or |delta|^2 / |h|^2.")
    clamp_norm: float = Field(0.75, gt=0, description="Maximum |delta| / |h|.")
    # MEMIT's 15000 (GPT-J) edits nothing on the organism; 100 from the sweep (BENCHMARKS.md)
    mom2_weight: float = Field(100.0, ge=0, description="lambda: weight of the key covariance (the prior).")
    empty_answer: str = Field("dummy", description="memit_empty: the answer every forget question should get.")
    batch_size: int = Field(64, ge=1, description="Edit requests per forward pass while optimising z.")


def default_band(n_layers: int) -> list[int]:
    """Layers 0.1-0.3 of the depth, ending before the last layer (whose output at the subject
    token no later position reads)."""
    last = min(max(round(0.3 * n_layers), round(0.1 * n_layers)), n_layers - 2)
    return list(range(min(round(0.1 * n_layers), last), last + 1))


def subject_positions(tokenizer, prompts: list[str], items: list[QA], add_special_tokens: bool = True) -> list[int]:
    """Index of the subject's last token in each encoded prompt (the entity's name when the
    item names one and the prompt contains it; else the prompt's last token); prompts are
    tokenised as ``encode_qa`` does (a chat template's without added special tokens)."""
    enc = tokenizer(prompts, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
    out = []
    for prompt, q, ids, offsets in zip(prompts, items, enc["input_ids"], enc["offset_mapping"], strict=True):
        pos = len(ids) - 1
        at = prompt.rfind(q.entity) if q.entity else -1
        if at >= 0:
            end = at + len(q.entity)
            covering = [i for i, (a, b) in enumerate(offsets) if a < end <= b or (b == end and b > a)]
            if covering:
                pos = covering[0]
        out.append(pos)
    return out


def _objective_loss(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row loss (B,): mean NLL of the labelled tokens (``empty``), or minus the mean entropy of
    the next-token distribution at the labelled positions (``entropy``)."""
    if kind == "empty":
        logp, mask = token_logprobs(logits, labels)
        return -(logp.sum(1) / mask.sum(1).clamp(min=1))
    mask = labels[:, 1:] != IGNORE                                         # (B, T-1)
    logp = torch.log_softmax(logits[:, :-1].float(), -1)                  # (B, T-1, V)
    entropy = -(logp.exp() * logp).sum(-1)                                 # (B, T-1)
    return -((entropy * mask).sum(1) / mask.sum(1).clamp(min=1))


def delta_penalty(delta: torch.Tensor, h_norm: torch.Tensor, kind: str = "memit") -> torch.Tensor:
    """(n,) penalty per edit: ``|delta| / |h|^2`` (MEMIT ``compute_z.py``) or ``(|delta| / |h|)^2``
    (``squared``); delta (n, d), h_norm (n,)."""
    d = delta.norm(dim=-1)
    return d / h_norm ** 2 if kind == "memit" else (d / h_norm) ** 2


def target_vectors(model, batch: dict, positions: torch.Tensor, layer: int, kind: str,
                   params: MEMITParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimise delta per row at ``positions`` of the stream leaving ``layer``. Returns
    ``(h, z)``, each (n, d)."""
    site = Site("resid_post", layer)
    rows = torch.arange(len(positions))
    with torch.no_grad():
        h = record(model, [site], lambda: forward_logits(model, batch))[site][rows, positions].float()  # (n, d)
    delta = torch.zeros_like(h, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=params.v_lr)
    h_norm = h.norm(dim=-1, keepdim=True)

    def add_delta(x):
        x = x.clone()
        x[rows, positions] += delta.to(x.dtype)
        return x

    for _ in range(params.v_steps):
        with hooks(model, {site: add_delta}):
            logits = forward_logits(model, batch)
        loss = _objective_loss(kind, logits, batch["labels"]).mean()
        loss = loss + params.v_weight_decay * delta_penalty(delta, h_norm.squeeze(-1), params.penalty).mean()
        delta.grad, = torch.autograd.grad(loss, [delta])  # the model's own .grad stays untouched
        opt.step()
        with torch.no_grad():  # clamp |delta| <= clamp_norm * |h|
            scale = (params.clamp_norm * h_norm / delta.norm(dim=-1, keepdim=True).clamp(min=1e-12)).clamp(max=1)
            delta.mul_(scale)
    return h, h + delta.detach()


@torch.no_grad()
def key_covariance(model, data: dict, layer: int, batch_size: int = 32) -> torch.Tensor:
    """``(d_mlp, d_mlp)`` E[k k^T] of the MLP coefficients of ``layer`` over the real tokens of ``data``."""
    site = Site("mlp_coefficients", layer)
    total, count = None, 0
    for i in range(0, data["input_ids"].shape[0], batch_size):
        batch = {k: data[k][i:i + batch_size].to(next(model.parameters()).device) for k in ("input_ids", "attention_mask")}
        k = record(model, [site], lambda b=batch: forward_logits(model, b))[site]
        k = k[batch["attention_mask"].bool()].double()                       # (tokens, d_mlp)
        total = k.T @ k if total is None else total + k.T @ k
        count += k.shape[0]
    return (total / max(count, 1)).cpu()


class _MEMIT(Method):
    kind = "transform"
    Params = MEMITParams
    objective: ClassVar[str] = ""

    def apply(self, out, subject, target, params):
        model, tok = subject.model, subject.tokenizer
        n_layers = num_layers(model)
        band = sorted(params.layers) if params.layers else default_band(n_layers)
        if not band or band[0] < 0 or band[-1] >= n_layers - 1:
            raise UserInputError(f"{self.name} layers {band} out of range: the model has {n_layers} layers and the "
                                 f"band must end before the last one ({n_layers - 1}), whose output at the subject "
                                 "token no later position reads")
        items = [q for q in target.all_forget_qa if q.kind == "qa"]
        if self.objective == "empty":
            edits = [QA(q.question, params.empty_answer, q.kind, q.entity, q.attribute) for q in items]
        else:
            edits = items
        batch = encode_qa(tok, edits, subject.prompt, subject.answer_eos)
        prompts = [render_prompt(q, subject.prompt, tok) for q in items]
        positions = torch.tensor(subject_positions(tok, prompts, items, add_special_tokens=not subject.prompt.chat))
        texts = target.retain_text + target.unrelated_text or [f"{q.question} {q.answer}" for q in target.retain_qa]
        general = encode_texts(tok, texts)

        edited, last = out.model, band[-1]
        was_training = edited.training
        edited.eval()
        try:
            z = torch.cat([target_vectors(edited, take(batch, slice(i, i + params.batch_size)),
                                          positions[i:i + params.batch_size], last, self.objective, params)[1]
                           for i in range(0, len(items), params.batch_size)])
            rows = torch.arange(len(positions))
            for i, layer in enumerate(band):
                with torch.no_grad():
                    cache = record(edited, [Site("mlp_coefficients", layer), Site("resid_post", last)],
                                   lambda: forward_logits(edited, batch))
                keys = cache[Site("mlp_coefficients", layer)][rows, positions].double()        # (n, d_mlp)
                current = cache[Site("resid_post", last)][rows, positions].double()            # (n, d)
                residual = (z.double() - current) / (last - layer + 1)
                cov = key_covariance(edited, general, layer)
                update = torch.linalg.solve(params.mom2_weight * cov + keys.T @ keys, keys.T @ residual)
                with torch.no_grad():
                    vv = value_vectors(edited, layer)
                    vv += update.to(vv.dtype)
                progress.log(f"{self.name}: layer {layer} ({i + 1}/{len(band)}), |residual| "
                             f"{float(residual.norm(dim=-1).mean()):.3f}")
        finally:
            edited.train(was_training)
        return {"layers": band, "edits": len(items)}


@register_method("memit_empty")
class MEMITEmpty(_MEMIT):
    objective = "empty"


@register_method("memit_entropy")
class MEMITEntropy(_MEMIT):
    objective = "entropy"
