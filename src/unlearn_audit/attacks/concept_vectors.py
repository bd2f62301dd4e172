"""Concept vectors: parametric knowledge traces in the MLP value vectors.

Hong et al. 2024 ("Intrinsic Evaluation of Unlearning Using Parametric Knowledge Traces",
ConceptVectors) locate MLP value vectors (rows of the down projection, Geva et al. 2022) whose
projection onto the vocabulary promotes a concept's tokens, show that damaging them removes the
concept, and find that fine-tuning unlearning barely changes them: behaviour changes while the
parametric trace stays.

Locating (on the original). Every value vector v of every layer is projected through the final
norm and the unembedding, ``p = W_U norm(v)`` (V logits: the logit lens of a weight), and
standardised over the vocabulary, ``z = (p - mean(p)) / std(p)``. Two scores:

- ``attribution`` (default): how much the vector, weighted by its coefficient ``a(x)`` (its
  neuron's activation), pushes the reference answer tokens of the concept's questions, minus the
  same on retain questions (teacher-forced; every answer position x with next token y):
  ``s(v) = mean_forget a(x) z_y - mean_retain a(x) z_y`` (direct logit attribution, Geva et
  al. 2022, through the standardised projection);
- ``projection`` (the purely parametric score): ``s(v) = mean_{t in C} z_t`` over the concept
  tokens C = tokens of the forget answers that occur in no retain or unrelated answer.

The ``n_vectors`` highest-scoring vectors are the concept vectors. On the micro organism (a
384-token vocabulary, so C holds word pieces) zeroing the 64 ``projection`` vectors barely moves
forget accuracy (1.00 -> 0.93; 64 random vectors: 0.96) while the 64 ``attribution`` vectors
take it to 0.66 (retain 0.98 -> 0.89): hence the default.

Measured per concept vector v (original) and the vector v' at the same layer and index of
another model: ``cos(v, v')`` and the Jaccard index of their top-``top_k`` (200) projected
tokens, ``J = |top(v) & top(v')| / |top(v) | top(v')|``. The trace T(model) is the mean J (1
for the original itself). ``projection`` says how a vector is projected for the Jaccard index:

- ``unembedding`` (default; ConceptVectors' ``jaccard_similarity``,
  yihuaihong/ConceptVectors@607591b415043f7692bc17a9748de3d8ff3fc0c7:evaluate_util.py, with
  ``top_k = 200``): the raw product ``E v`` with the *original's* output embedding E, for both
  vectors, so that J measures how the vector moved and nothing else;
- ``logit_lens``: ``W_U norm(v)``, each vector through its own model's final norm and
  unembedding (what the model itself would read from it; a change of the final norm or of the
  unembedding then moves J too).

This audit reads weights; nothing is attacked. Recovery and residual use the formulas of
:mod:`unlearn_audit.metrics.recovery`
with the trace as the measurement and, for recovery, the trace of a model with none of the
original's concept vectors (J = 0) in place of "unlearned":

    recovery = (T_unlearned - 0) / (T_original - 0) = T_unlearned
    residual = (T_unlearned - T_oracle) / (T_original - T_oracle)

1: the concept vectors are as they were (the trace is intact); 0: changed as much as in a model
that never learned the concept. ``residual_cosine`` is the same with the mean cosine.

Checks reported alongside: the *ablation* (zeroing the concept vectors in the original lowers
its forget accuracy, much more than zeroing as many random vectors, the control, and more than
its retain accuracy: the vectors matter for this concept), and *restoration* (copying the
original's concept vectors into the unlearned model: ``restore_recovery`` =
``(acc_restored - acc_unlearned) / (acc_original - acc_unlearned)`` on the forget QA).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from ..data.encode import encode_qa, take
from ..errors import UserInputError
from ..metrics.likelihood import eval_mode, forward
from ..metrics.qa import EvalSuite
from ..metrics.recovery import recovery, residual
from ..subject import residency
from ..subject.sites import Site, num_layers, patched_weights, record, unembed, value_vectors
from ..world import QA
from .base import Attack, AttackParams, register_attack


class ConceptVectorParams(AttackParams):
    locate: str = Field("attribution", pattern="^(attribution|projection)$",
                        description="How concept vectors are scored: attribution (default) or projection.")
    n_vectors: int = Field(64, ge=1, description="How many value vectors to locate as the concept's.")
    top_k: int = Field(200, ge=1, description="Projected tokens compared by the Jaccard index (200: ConceptVectors).")
    projection: Literal["unembedding", "logit_lens"] = Field(
        "unembedding", description="unembedding: raw E·v with the original's output embedding for both vectors "
                                   "(ConceptVectors); logit_lens: final norm and each model's own unembedding.")
    chunk: int = Field(1024, ge=1, description="Value vectors projected per matrix product.")
    batch_size: int = Field(64, ge=1)


def concept_tokens(tokenizer, forget: Sequence[QA], others: Sequence[QA]) -> list[int]:
    """Token ids of the forget answers that occur in none of ``others``' answers."""
    def ids(items):
        out: set[int] = set()
        for q in items:
            out.update(tokenizer(" " + q.answer, add_special_tokens=False)["input_ids"])
        return out

    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    return sorted(ids(forget) - ids(others) - special)


@torch.no_grad()
def standardised_projection(model, layer: int, columns: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """``(d_mlp, len(columns))``: the value vectors of ``layer`` projected to the vocabulary,
    standardised over the whole vocabulary per vector, at the token ids ``columns``."""
    vv = value_vectors(model, layer)                                        # (d_mlp, d_model)
    out = []
    for s in range(0, vv.shape[0], chunk):
        logits = unembed(model, vv[s:s + chunk]).float()                     # (c, V)
        z = (logits - logits.mean(-1, keepdim=True)) / logits.std(-1, keepdim=True).clamp(min=1e-6)
        out.append(z[:, columns.to(z.device)].cpu())
    return torch.cat(out)


@torch.no_grad()
def attribution_scores(subject, forget: Sequence[QA], retain: Sequence[QA], chunk: int = 1024,
                       batch_size: int = 64) -> torch.Tensor:
    """``(n_layers, d_mlp)``: mean coefficient x standardised projection at the next answer
    token over the forget answer positions, minus the same over the retain answer positions."""
    model, tok = subject.model, subject.tokenizer
    n_layers = num_layers(model)
    encoded = {k: encode_qa(tok, items, subject.prompt, subject.answer_eos)
               for k, items in (("forget", forget), ("retain", retain)) if items}
    used = torch.unique(torch.cat([e["labels"][e["labels"] != -100] for e in encoded.values()]))
    column = torch.full((int(used.max()) + 1,), -1, dtype=torch.long)
    column[used] = torch.arange(len(used))
    z = [standardised_projection(model, layer, used, chunk) for layer in range(n_layers)]   # L x (d_mlp, U)
    sites = [Site("mlp_coefficients", layer) for layer in range(n_layers)]
    device = next(model.parameters()).device
    means = {}
    with eval_mode(model):
        for key, data in encoded.items():
            total, count = torch.zeros(n_layers, z[0].shape[0]), 0
            for i in range(0, data["input_ids"].shape[0], batch_size):
                batch = take(data, slice(i, i + batch_size))
                ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                acts = record(model, sites, lambda ids=ids, mask=mask: forward(model, ids, mask))
                target = batch["labels"][:, 1:]                               # (B, T-1)
                scored = target != -100
                cols = column[target[scored]]                                 # (P,)
                for layer, site in enumerate(sites):
                    a = acts[site][:, :-1][scored.to(device)].float().cpu()   # (P, d_mlp)
                    total[layer] += (a * z[layer][:, cols].T).sum(0)
                count += int(scored.sum())
            means[key] = total / max(count, 1)
    return means["forget"] - means["retain"] if "retain" in means else means["forget"]


def projection_scores(model, tokens: Sequence[int], chunk: int = 1024) -> torch.Tensor:
    """``(n_layers, d_mlp)``: mean standardised projection over ``tokens``."""
    cols = torch.tensor(list(tokens))
    return torch.stack([standardised_projection(model, layer, cols, chunk).mean(1)
                        for layer in range(num_layers(model))])


def top_vectors(scores: torch.Tensor, n: int) -> list[tuple[int, int]]:
    """The ``n`` highest ``(layer, index)`` of ``scores (n_layers, d_mlp)``."""
    width = scores.shape[1]
    return [(i // width, i % width) for i in scores.flatten().topk(min(n, scores.numel())).indices.tolist()]


def _copy_layout(v: torch.Tensor) -> torch.Tensor:
    """A copy of the vector ``v`` that is strided when ``v`` is (a row of a transposed weight):
    the cosine's reduction then takes the same kernel path as on the weight itself (a contiguous
    copy moves the cosine in the eighth digit)."""
    if v.is_contiguous():
        return v.detach().clone()
    out = torch.empty(v.shape[0], 2, dtype=v.dtype, device=v.device)[:, 0]
    return out.copy_(v.detach())


def _top_tokens(logits: torch.Tensor, top_k: int) -> list[set[int]]:
    """The ``top_k`` highest token ids of each row of ``logits (n, V)``."""
    return [set(row) for row in logits.float().topk(min(top_k, logits.shape[-1]), dim=-1).indices.tolist()]


def _vectors(model, located: list[tuple[int, int]]) -> torch.Tensor:
    return torch.stack([value_vectors(model, layer)[i] for layer, i in located])


@torch.no_grad()
def snapshot(model, located: list[tuple[int, int]], top_k: int, projection: str = "unembedding") -> dict:
    """What :func:`compare` needs of the original (an HF model): its located value vectors, its
    top-k projected tokens of each, its value-vector shape and, for ``projection='unembedding'``,
    its output embedding (parked off the device); taken once, so that the original need not be
    on the device while another model is compared with it."""
    rows = [_copy_layout(value_vectors(model, layer)[i]) for layer, i in located]
    vectors = _vectors(model, located)
    if projection == "unembedding":
        E = model.get_output_embeddings().weight.detach()
        logits, embedding = vectors @ E.T, residency.park({"E": E}, copy=True)
    else:
        logits, embedding = unembed(model, vectors), None
    return {"rows": rows, "tops": _top_tokens(logits, top_k), "embedding": embedding, "projection": projection,
            "shape": (num_layers(model), tuple(value_vectors(model, 0).shape))}


@torch.no_grad()
def compare(original: dict, other, located: list[tuple[int, int]], top_k: int) -> dict:
    """Per concept vector (layer, index) of the original (its :func:`snapshot`) and ``other``
    (an HF model): cosine of the two vectors and Jaccard index of their top-k projected tokens
    (both through the original's output embedding, or each through its own model's logit lens:
    the snapshot's ``projection``); and their means."""
    vectors = _vectors(other, located)
    if original["projection"] == "unembedding":
        logits = vectors @ original["embedding"].get("E").to(vectors.device, vectors.dtype).T
    else:
        logits = unembed(other, vectors)
    cos, jac = [], []
    for (layer, i), row, a, b in zip(located, original["rows"], original["tops"], _top_tokens(logits, top_k), strict=True):
        v, w = row.float(), value_vectors(other, layer)[i]
        cos.append(float(torch.nn.functional.cosine_similarity(v, w.float().to(v.device), dim=0)))
        jac.append(len(a & b) / len(a | b))
    return {"cosine": sum(cos) / len(cos), "jaccard": sum(jac) / len(jac),
            "per_vector": {"cosine": cos, "jaccard": jac}}


def _replaced(model, located, rows: list[torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
    """New value-vector matrices per layer: the located rows zeroed (``rows`` None) or set to
    ``rows`` (the original's, from its :func:`snapshot`)."""
    out = {}
    for n, (layer, i) in enumerate(located):
        if layer not in out:
            out[layer] = value_vectors(model, layer).detach().clone()
        out[layer][i] = 0 if rows is None else rows[n].to(out[layer].device, out[layer].dtype)
    return out


def ablation(original, suite: EvalSuite, located, seed: int) -> dict:
    """Accuracies of the original with the concept vectors zeroed, and with as many random
    value vectors zeroed (the control)."""
    n_layers, width = num_layers(original.model), value_vectors(original.model, 0).shape[0]
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(n_layers * width, generator=g)[:len(located)].tolist()
    control = [(p // width, p % width) for p in picks]
    out = {"before": suite.accuracies(original)}
    for key, rows in (("concept", located), ("random", control)):
        with patched_weights(original.model, _replaced(original.model, rows)):
            out[key] = suite.accuracies(original)
    return out


def _locate(original, target, forget: list[QA], params: ConceptVectorParams) -> list[tuple[int, int]]:
    if params.locate == "projection":
        tokens = concept_tokens(original.tokenizer, forget, target.retain_qa + target.unrelated_qa)
        if not tokens:
            raise UserInputError("concept_vectors: every token of the forget answers also occurs in retain or "
                                 "unrelated answers, so none is the concept's own; use locate=attribution")
        scores = projection_scores(original.model, tokens, params.chunk)
    else:
        scores = attribution_scores(original, forget, [q for q in target.retain_qa if q.kind == "qa"],
                                    params.chunk, params.batch_size)
    return top_vectors(scores, params.n_vectors)


@register_attack
class ConceptVectors(Attack):
    name = "concept_vectors"
    needs_internals = True
    Params = ConceptVectorParams
    summary = "MLP value vectors carrying the concept: cosine / top-k Jaccard vs the original (Hong et al. 2024)"

    def setup(self, original, target, params: ConceptVectorParams, references=None) -> dict:
        """The located vectors (from the original's reference when given: locating is the costly
        part) and the evaluation suites."""
        forget = [q for q in target.all_forget_qa if q.kind == "qa"]
        if not forget:
            raise UserInputError("concept_vectors needs forget QA (question/answer lines)")
        located = ([tuple(x) for x in references["original"]["vectors"]] if references is not None
                   else _locate(original, target, forget, params))
        sets = {k: v for k, v in (("forget", forget), ("retain", target.retain_qa),
                                  ("unrelated", target.unrelated_qa)) if v}
        forget_suite = EvalSuite(original, {"forget": forget})
        return {"located": located, "snapshot": snapshot(original.model, located, params.top_k, params.projection),
                "suite": EvalSuite(original, sets), "forget_suite": forget_suite,
                "acc_original": forget_suite.accuracies(original)["forget"]}

    def measure(self, subject, setup: dict, params: ConceptVectorParams, role: str) -> dict:
        located, original = setup["located"], setup["snapshot"]
        if role == "original":
            return {"vectors": [list(x) for x in located], "locate": params.locate,
                    "ablation": ablation(subject, setup["suite"], located, params.seed)}
        if (num_layers(subject.model), tuple(value_vectors(subject.model, 0).shape)) != original["shape"]:
            raise UserInputError(f"concept_vectors: the {role} model does not have the original's architecture; "
                                 "value vectors are compared index by index")
        trace = compare(original, subject.model, located, params.top_k)
        if role == "oracle":
            return trace
        suite = setup["forget_suite"]
        acc = suite.accuracies(subject)["forget"]
        with patched_weights(subject.model, _replaced(subject.model, located, original["rows"])):
            restored = suite.accuracies(subject)["forget"]
        return {**trace, "acc": acc, "restored_acc": restored}

    def score(self, m: dict, original: dict, oracle: dict | None, setup: dict, params, name: str) -> dict:
        t_oracle = oracle["jaccard"] if oracle is not None else None
        c_oracle = oracle["cosine"] if oracle is not None else None
        trace = {k: m[k] for k in ("cosine", "jaccard", "per_vector")}
        return {
            "recovery": recovery(m["jaccard"], 0.0, 1.0),
            "residual": residual(m["jaccard"], t_oracle, 1.0, t_oracle) if oracle is not None else None,
            "residual_cosine": residual(m["cosine"], c_oracle, 1.0, c_oracle) if oracle is not None else None,
            **trace, "acc": m["acc"], "restored_acc": m["restored_acc"],
            "restore_recovery": recovery(m["restored_acc"], m["acc"], setup["acc_original"])}
