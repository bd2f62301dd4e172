"""ConceptVectors' trace (Jaccard of top-200 projected tokens) against the reference code.

Reference: yihuaihong/ConceptVectors@607591b415043f7692bc17a9748de3d8ff3fc0c7:evaluate_util.py
``jaccard_similarity`` (``top_k = 200``; ``E = model.get_output_embeddings().weight`` of the
model passed in, which evaluate_llama.py passes as the *original*; ``logits = params.T @ E.T``
sorted descending, the first 200 tokens of each vector; ``|A ∩ B| / |A ∪ B|``), with the
vectors ``state_dict()['model.layers.{layer}.mlp.down_proj.weight'][:, dim]`` (evaluate_llama.py).
"""

from __future__ import annotations

import pytest
import torch

from unlearn_audit.attacks.concept_vectors import ConceptVectorParams, compare, snapshot

LOCATED = [(0, 3), (1, 17), (1, 40)]


def _llama(seed: int, vocab: int = 600):
    import transformers as tf

    torch.manual_seed(seed)
    config = tf.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return tf.LlamaForCausalLM(config).eval()


def _moved(model, seed: int):
    """A copy whose value vectors, final norm gain (non-uniform) and output embedding all moved."""
    import copy

    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in other.model.layers:
            w = layer.mlp.down_proj.weight
            w.add_(torch.randn(w.shape, generator=g) * 0.5 * w.std())
        other.model.norm.weight.mul_(torch.rand(other.model.norm.weight.shape, generator=g) * 2)
        e = other.lm_head.weight
        e.add_(torch.randn(e.shape, generator=g) * 0.3 * e.std())
    return other


def reference_jaccard(original, other, layer: int, dim: int, top_k: int = 200) -> float:
    E = original.get_output_embeddings().weight.detach()
    key = f"model.layers.{layer}.mlp.down_proj.weight"
    p1, p2 = original.state_dict()[key][:, dim], other.state_dict()[key][:, dim]
    # (the reference writes params.T: a no-op on a vector)
    ids1 = torch.sort(p1.matmul(E.T), descending=True).indices[:top_k].tolist()
    ids2 = torch.sort(p2.matmul(E.T), descending=True).indices[:top_k].tolist()
    return len(set(ids1) & set(ids2)) / len(set(ids1) | set(ids2))


def test_default_trace_is_conceptvectors_jaccard():
    original = _llama(0)
    other = _moved(original, 1)
    p = ConceptVectorParams()
    assert (p.top_k, p.projection) == (200, "unembedding")
    ours = compare(snapshot(original, LOCATED, p.top_k, p.projection), other, LOCATED, p.top_k)
    expected = [reference_jaccard(original, other, layer, dim) for layer, dim in LOCATED]
    assert ours["per_vector"]["jaccard"] == expected
    assert 0 < min(expected) and max(expected) < 1                          # a test that can tell
    assert ours["jaccard"] == pytest.approx(sum(expected) / len(expected), abs=1e-12)


def test_logit_lens_is_another_number():
    """The former default (each model's final norm and unembedding) differs from the reference
    on this pair: the tests above would catch a swap."""
    original = _llama(0)
    other = _moved(original, 1)
    lens = compare(snapshot(original, LOCATED, 200, "logit_lens"), other, LOCATED, 200)
    expected = [reference_jaccard(original, other, layer, dim) for layer, dim in LOCATED]
    assert lens["per_vector"]["jaccard"] != expected


def test_an_unchanged_vector_keeps_its_tokens_whatever_the_unembedding_does():
    """With the original's embedding for both, moving only the other's output embedding leaves
    J at 1 (as in the reference); through each model's own lens it drops."""
    import copy

    original = _llama(2)
    other = copy.deepcopy(original)
    with torch.no_grad():
        other.lm_head.weight.add_(torch.randn(other.lm_head.weight.shape) * other.lm_head.weight.std())
    raw = compare(snapshot(original, LOCATED, 200), other, LOCATED, 200)
    lens = compare(snapshot(original, LOCATED, 200, "logit_lens"), other, LOCATED, 200)
    assert raw["jaccard"] == 1.0 == reference_jaccard(original, other, *LOCATED[0])
    assert lens["jaccard"] < 1.0
