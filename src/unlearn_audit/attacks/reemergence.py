"""Where does a concept re-emerge while a model relearns it? Concept neurons by layer.

Lo, Cohen & Barez 2024 ("Large Language Models Relearn Removed Concepts") track, at every
retraining checkpoint after neuron pruning, which MLP neurons carry the concept and how they
relate to the neurons that carried it before. This module does that for any method, at the
checkpoints of the relearning attacks (no extra training):

- **Saliency** of neuron n (an MLP coefficient) for the concept, probeless (Antverg & Belinkov
  2022, the ranking Lo et al. use through NeuroX):

      s(n) = mean over concept tokens of a_n  -  mean over non-concept tokens of a_n

  concept tokens: the forget QA (questions and answers, a seeded sample of 64); non-concept:
  as many retain QA.
  ``rank(n)`` = s(n)'s normalised rank among all neurons (1 = most concept-salient).
- **Saliency by layer**: the mean of the top ``top_frac`` scores within each layer.
- **Top set**: the globally top ``top_frac`` neurons by s; **overlap with the original**: the
  Jaccard index of the current top set with the *original model's* (before any relearning),
  and the Spearman correlation of all neurons' scores with the original's. A model that
  *hides* the concept revives the original's neurons when relearning; an oracle, which never
  knew the concept, has to build it elsewhere.
- **New neurons by layer**: how many of the current top set are not in the original's, per
  layer (after pruning: which layers take the pruned neurons' role). A neuron whose value
  vector is zero (pruned) scores 0; ``dead_revival`` follows how far relearning regrows the
  neurons that were dead at the start (their mean value-vector norm over the live ones').
- **Meaning** (no external embedding needed): a top neuron's value vector projected through
  the unembedding; the fraction of top neurons whose 10 highest tokens include a concept
  token (tokens of the forget answers and entity names).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.encode import encode_qa
from ..subject.sites import Site, num_layers, token_means, value_vectors


@dataclass
class ConceptProbe:
    """The encoded inputs saliency is measured on, and the concept's tokens."""

    concept: dict
    other: dict
    concept_tokens: torch.Tensor  # (K,) token ids
    top_frac: float = 0.02


def concept_probe(subject, target, top_frac: float = 0.02, seed: int = 0, max_items: int = 64) -> ConceptProbe:
    """Up to ``max_items`` forget QA (seeded sample; a mean over this many answers' tokens is
    stable enough to rank neurons, and it keeps tracking cheap next to relearning) and as many
    retain QA."""
    tok = subject.tokenizer
    g = torch.Generator().manual_seed(seed)

    def sample(items):
        return [items[i] for i in sorted(torch.randperm(len(items), generator=g)[:max_items].tolist())]

    concept_items = sample(target.all_forget_qa)
    other = sample(target.retain_qa or target.unrelated_qa)[:len(concept_items)]
    words = {q.answer for q in target.all_forget_qa} | {q.entity for q in target.all_forget_qa if q.entity}
    ids = {t for w in words for t in tok(" " + w, add_special_tokens=False)["input_ids"]}
    shared = {t for q in other for t in tok(" " + q.answer, add_special_tokens=False)["input_ids"]}
    return ConceptProbe(encode_qa(tok, concept_items, subject.prompt, subject.answer_eos),
                        encode_qa(tok, other, subject.prompt, subject.answer_eos),
                        torch.tensor(sorted(ids - shared), dtype=torch.long), top_frac)


def value_norms(model) -> torch.Tensor:
    """(n_layers, d_mlp) norm of every neuron's value vector (0: the neuron writes nothing)."""
    with torch.no_grad():
        return torch.stack([value_vectors(model, layer).float().norm(dim=1).cpu() for layer in range(num_layers(model))])


def saliency(model, probe: ConceptProbe) -> torch.Tensor:
    """(n_layers, d_mlp) probeless scores: mean coefficient on concept minus on other tokens.
    A neuron whose value vector is zero (pruned) scores 0: whatever it reads, it writes nothing."""
    sites = [Site("mlp_coefficients", layer) for layer in range(num_layers(model))]
    a = token_means(model, probe.concept, sites, batch_size=128)
    b = token_means(model, probe.other, sites, batch_size=128)
    return torch.stack([a[s] - b[s] for s in sites]) * (value_norms(model) > 0)


def top_set(scores: torch.Tensor, frac: float) -> torch.Tensor:
    """Boolean mask of the globally top ``frac`` of neurons (at least one)."""
    k = max(1, int(frac * scores.numel()))
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[torch.topk(scores.flatten(), k).indices] = True
    return mask.view_as(scores)


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Rank correlation (ties broken by order; the scores are continuous)."""
    rx = torch.argsort(torch.argsort(x.flatten())).double()
    ry = torch.argsort(torch.argsort(y.flatten())).double()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()).clamp(min=1e-12))


def by_layer(scores: torch.Tensor, frac: float) -> list[float]:
    """Mean of the top ``frac`` scores within each layer."""
    k = max(1, int(frac * scores.shape[1]))
    return torch.topk(scores, k, dim=1).values.mean(1).tolist()


@torch.no_grad()
def meaningful_fraction(model, mask: torch.Tensor, concept_tokens: torch.Tensor, k: int = 10) -> float | None:
    """Fraction of the neurons in ``mask`` whose value vector's top-``k`` projected tokens
    include a concept token."""
    if not len(concept_tokens) or not bool(mask.any()):
        return None
    hits, total = 0, 0
    for layer in range(mask.shape[0]):
        idx = mask[layer].nonzero().flatten()
        if not len(idx):
            continue
        vv = value_vectors(model, layer)[idx.to(value_vectors(model, layer).device)]      # (m, d)
        logits = model.get_output_embeddings()(vv)                                        # (m, V)
        top = logits.topk(k, dim=-1).indices.cpu()                                         # (m, k)
        hits += int(torch.isin(top, concept_tokens).any(1).sum())
        total += len(idx)
    return hits / total


class Tracker:
    """Collects saliency at relearning checkpoints of one model and summarises it against the
    original model's top set."""

    def __init__(self, probe: ConceptProbe, original_scores: torch.Tensor):
        self.probe, self.reference = probe, original_scores
        self.reference_top = top_set(original_scores, probe.top_frac)
        self.scores: list[torch.Tensor] = []
        self.meaningful: list[float | None] = []
        self.dead: torch.Tensor | None = None      # neurons writing nothing at the first checkpoint
        self.revival: list[float | None] = []

    def __call__(self, model) -> None:
        scores = saliency(model, self.probe)
        self.scores.append(scores)
        self.meaningful.append(meaningful_fraction(model, top_set(scores, self.probe.top_frac),
                                                   self.probe.concept_tokens))
        norms = value_norms(model)
        if self.dead is None:
            self.dead = norms == 0
        # how far relearning regrows the dead (pruned) neurons: their mean value-vector norm
        # over the live neurons' mean norm
        live = norms[~self.dead]
        self.revival.append(float(norms[self.dead].mean() / live.mean()) if bool(self.dead.any()) and len(live) else None)

    def summary(self) -> dict:
        frac = self.probe.top_frac
        tops = [top_set(s, frac) for s in self.scores]
        out = {"saliency_by_layer": [by_layer(s, frac) for s in self.scores],
               "overlap_with_original": [jaccard(t, self.reference_top) for t in tops],
               "rank_correlation": [spearman(s, self.reference) for s in self.scores],
               "new_top_by_layer": [(t & ~self.reference_top).sum(1).tolist() for t in tops],
               "meaningful_top_fraction": self.meaningful,
               "dead_at_start": int(self.dead.sum()) if self.dead is not None else 0,
               "dead_revival": self.revival}
        return out
