"""memit_entropy's objective (Patil et al. 2024) and MEMIT's step count against the reference code.

References:
- Vaidehi99/InfoDeletionAttacks@c23aeff7d34ede916a3e4d7aa7811d722ec361a7:third_party/memit/compute_z.py
  (``collect_logits``: ``model(..., output_hidden_states=True)`` with delta injected, each chosen
  layer's hidden state through the final norm and ``lm_head``, softmax; at the last position of
  each prompt; ``Categorical(probs).entropy().mean()`` over layers and prompts;
  ``loss = -entropy + kl_loss + weight_decay``; no early stop under ``fact_erasure``);
- kmeng01/memit@80426fd9316cf9a50c5ba15e0912f2c2c5bfe84b:memit/compute_z.py (the loop breaks at
  ``it == v_num_grad_steps - 1`` before ``backward``, and when ``loss < 5e-2``).
"""

from __future__ import annotations

import pytest
import torch
from parity_helpers import PAD, qa_batch

from unlearn_audit.methods import memit
from unlearn_audit.methods.memit import MEMITParams, target_vectors, z_objective


def _llama(seed: int):
    import transformers as tf

    torch.manual_seed(seed)
    config = tf.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                            num_attention_heads=4, num_key_value_heads=2, pad_token_id=PAD, initializer_range=0.3)
    return tf.LlamaForCausalLM(config).eval()


def reference_objective(model, batch, positions, layer, delta, layers):
    """Minus the mean entropy of the hidden states' lens at the last prompt position, delta added
    to layer ``layer``'s output (HF ``hidden_states[l + 1]`` is layer l's output; the last one
    already carries the final norm, so the model's logits stand for it)."""
    rows = torch.arange(len(positions))

    def add(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[rows, positions] += delta
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = model.model.layers[layer].register_forward_hook(add)
    try:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    finally:
        handle.remove()
    last = torch.tensor([int((row != -100).nonzero()[0]) - 1 for row in batch["labels"]])
    n = len(model.model.layers)
    entropies = []
    for at in layers:
        if at == n - 1:
            logits = out.logits[rows, last]
        else:
            logits = model.lm_head(model.model.norm(out.hidden_states[at + 1][rows, last]))
        entropies.append(torch.distributions.Categorical(probs=torch.softmax(logits.float(), -1)).entropy())
    return -torch.stack(entropies).mean(0)


@pytest.mark.parametrize("layers", [[2, 3], [1, 2], [3]])
def test_logit_lens_entropy_is_the_references(layers):
    model = _llama(0)
    batch = qa_batch(1)
    positions = torch.tensor([2, 4, 1])
    g = torch.Generator().manual_seed(2)
    delta = torch.randn(3, 32, generator=g)
    params = MEMITParams(entropy_layers=layers)
    with torch.no_grad():
        ours = z_objective(model, batch, positions, 1, delta, "logit_lens", params)
        ref = reference_objective(model, batch, positions, 1, delta, layers)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    with torch.no_grad():
        moved = ref - reference_objective(model, batch, positions, 1, 0 * delta, layers)
    assert float(moved.abs().max()) > 1e-3                                   # delta reaches the lens


def test_default_objective_is_logit_lens_not_the_answer_entropy():
    """The former objective (final layer over the answer positions) is another number."""
    model = _llama(0)
    batch, positions = qa_batch(1), torch.tensor([2, 4, 1])
    delta = torch.zeros(3, 32)
    params = MEMITParams()
    assert params.entropy == "logit_lens" and memit.default_entropy_layers(28) == list(range(22, 28))
    with torch.no_grad():
        lens = z_objective(model, batch, positions, 1, delta, params.entropy, params)
        answer = z_objective(model, batch, positions, 1, delta, "answer", params)
        ref = reference_objective(model, batch, positions, 1, delta, memit.default_entropy_layers(4))
    torch.testing.assert_close(lens, ref, rtol=0, atol=1e-5)
    assert float((answer - ref).abs().max()) > 1e-3


@pytest.mark.parametrize("kind", ["logit_lens", "empty"])
def test_v_steps_counts_passes_as_compute_z(kind):
    """One pass evaluates and updates nothing (z = h); two passes make one Adam step, which moves
    every coordinate by at most v_lr."""
    model = _llama(3)
    batch, positions = qa_batch(4), torch.tensor([2, 4, 1])
    h, z = target_vectors(model, batch, positions, 1, kind, MEMITParams(v_steps=1))
    assert torch.equal(h, z)
    h, z = target_vectors(model, batch, positions, 1, kind, MEMITParams(v_steps=2, v_lr=0.01, clamp_norm=100.0))
    step = (z - h).abs()
    assert float(step.max()) <= 0.01 + 1e-6 and float(step.max()) > 0.005


def test_an_edit_below_the_early_stop_keeps_its_delta(monkeypatch):
    """memit_empty: an edit whose loss is under compute_z's 5e-2 stops; others go on."""
    model = _llama(3)
    batch, positions = qa_batch(4), torch.tensor([2, 4, 1])
    params = MEMITParams(v_steps=4, v_weight_decay=0.0)
    with torch.no_grad():
        nll = z_objective(model, batch, positions, 1, torch.zeros(3, 32), "empty", params)
    middle = nll.sort().values[1]
    monkeypatch.setattr(memit, "EARLY_STOP", float(middle) + 1e-6)          # the two lowest stop at once
    h, z = target_vectors(model, batch, positions, 1, "empty", params)
    stopped = nll <= middle
    assert int(stopped.sum()) == 2
    assert torch.equal(z[stopped], h[stopped]) and not torch.equal(z[~stopped], h[~stopped])
