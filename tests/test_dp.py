"""DP-SGD: the accountant against Opacus and by hand, the gradient against per-example loops,
and the DP organism's recipe."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from unlearn_audit.errors import UserInputError
from unlearn_audit.training import TrainConfig, train
from unlearn_audit.training.dp import (
    DPSGD,
    epsilon_spent,
    group_privacy,
    noise_multiplier_for,
    poisson_batches,
)


def test_epsilon_matches_opacus_accountant_stepped():
    pytest.importorskip("opacus")
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(300):
        accountant.step(noise_multiplier=1.1, sample_rate=0.02)
    assert epsilon_spent(1.1, 0.02, 300, 1e-5) == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-9)


def test_epsilon_without_subsampling_by_hand():
    # q = 1: the Gaussian mechanism, RDP(alpha) = T alpha / (2 sigma^2) exactly (Mironov 2017,
    # Proposition 7); Opacus converts to (epsilon, delta) with Balle et al. 2020's bound,
    # epsilon = min_alpha RDP(alpha) + log((alpha - 1) / alpha) - (log delta + log alpha) / (alpha - 1)
    pytest.importorskip("opacus")
    from opacus.accountants import RDPAccountant

    sigma, steps, delta = 2.0, 10, 1e-5
    a = np.array(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
    by_hand = np.min(steps * a / (2 * sigma**2) + np.log((a - 1) / a) - (np.log(delta) + np.log(a)) / (a - 1))
    assert epsilon_spent(sigma, 1.0, steps, delta) == pytest.approx(float(by_hand), rel=1e-9)


def test_the_noise_multiplier_reaches_its_epsilon():
    pytest.importorskip("opacus")
    sigma = noise_multiplier_for(4.0, 1e-5, 0.05, 500)
    assert 3.95 <= epsilon_spent(sigma, 0.05, 500, 1e-5) <= 4.0
    assert epsilon_spent(sigma * 0.97, 0.05, 500, 1e-5) > 4.0  # and is about the smallest that does
    assert noise_multiplier_for(math.inf, 1e-5, 0.05, 500) == 0.0
    assert epsilon_spent(0.0, 0.05, 500, 1e-5) == math.inf


def test_group_privacy_by_hand():
    eps, delta = group_privacy(0.5, 1e-5, 3)
    assert eps == pytest.approx(1.5) and delta == pytest.approx(3 * math.exp(1.0) * 1e-5)
    assert group_privacy(8.0, 1e-5, 40) == (320.0, 1.0)  # delta past 1: no guarantee left


def _tiny_lm(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                                        pad_token_id=0))


def _batch(n=6, width=9, seed=1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (n, width), generator=gen)
    lengths = torch.randint(3, width + 1, (n,), generator=gen)
    mask = torch.arange(width)[None] < lengths[:, None]
    return {"input_ids": ids.masked_fill(~mask, 0), "attention_mask": mask.long(),
            "labels": ids.masked_fill(~mask, -100)}


def _per_example_grads(model, batch):
    """Each example's gradient by its own forward and backward (unpadded): the other way."""
    out = []
    for i in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][i].sum())
        model.zero_grad()
        model(input_ids=batch["input_ids"][i:i + 1, :n], labels=batch["labels"][i:i + 1, :n]).loss.backward()
        out.append([p.grad.clone() for p in model.parameters()])
    model.zero_grad()
    return out


def test_the_dp_gradient_is_the_clipped_per_example_sum():
    model, batch = _tiny_lm(), _batch()
    grads = _per_example_grads(model, batch)
    clip = 0.5
    expected = []
    norms = [torch.sqrt(sum(g.pow(2).sum() for g in gs)) for gs in grads]
    assert min(norms) > clip  # so every example is clipped and the test can fail
    for j in range(len(grads[0])):
        expected.append(sum(gs[j] * min(1.0, clip / (float(nm) + 1e-6)) for gs, nm in zip(grads, norms, strict=True)) / 8)
    params = list(model.parameters())
    DPSGD(0.0, clip, expected_batch_size=8, chunk=4).set_gradients(model, params, batch)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-7)


def test_the_noise_has_sigma_c_over_b_and_is_seeded():
    model, batch = _tiny_lm(), _batch()
    params = list(model.parameters())
    DPSGD(0.0, 0.5, 8).set_gradients(model, params, batch)
    clean = [p.grad.clone() for p in params]
    DPSGD(3.0, 0.5, 8, seed=4).set_gradients(model, params, batch)
    noise = torch.cat([(p.grad - c).flatten() for p, c in zip(params, clean, strict=True)])
    assert float(noise.std()) == pytest.approx(3.0 * 0.5 / 8, rel=0.05)
    first = [p.grad.clone() for p in params]
    DPSGD(3.0, 0.5, 8, seed=4).set_gradients(model, params, batch)
    assert all(torch.equal(p.grad, f) for p, f in zip(params, first, strict=True))


def test_without_noise_or_clipping_dp_training_is_ordinary_training():
    batches = [_batch(seed=s) for s in range(4)]
    dp_model, plain_model = _tiny_lm(), _tiny_lm()
    config = TrainConfig(steps=4, lr=1e-2, max_grad_norm=None)
    train(dp_model, None, iter(batches), config, dp=DPSGD(0.0, None, expected_batch_size=6))

    def mean_example_loss(batch):  # the ordinary loss DP-SGD's gradient is the gradient of
        losses = [plain_model(input_ids=batch["input_ids"][i:i + 1], labels=batch["labels"][i:i + 1]).loss
                  for i in range(batch["input_ids"].shape[0])]
        return sum(losses) / 6

    train(plain_model, mean_example_loss, iter(batches), config)
    # AdamW divides by sqrt(v): a float-rounding difference in a near-zero gradient moves a
    # weight by up to ~lr, so the tolerance is 1e-5 against steps that move weights by ~1e-2
    for a, b in zip(dp_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    moved = max(float((a - b).detach().abs().max()) for a, b in zip(dp_model.parameters(), _tiny_lm().parameters(),
                                                                      strict=True))
    assert moved > 1e-2


def test_poisson_batches_sample_each_row_at_the_rate():
    batch = _batch(n=200, width=5)
    draws = poisson_batches(batch, 0.1, seed=3)
    sizes = [next(draws)["input_ids"].shape[0] for _ in range(200)]
    assert np.mean(sizes) == pytest.approx(20, rel=0.05)
    again = poisson_batches(batch, 0.1, seed=3)
    assert [next(again)["input_ids"].shape[0] for _ in range(200)] == sizes


def test_dp_presets_by_name_and_unchanged_keys_for_the_rest():
    from dataclasses import asdict

    from unlearn_audit.errors import UserInputError
    from unlearn_audit.organisms import PRESETS, dp_preset_name, get_preset

    assert dp_preset_name("micro", 8.0) == "micro-dp8"
    assert dp_preset_name("micro", 0.5, 1e-6, 0.1) == "micro-dp0.5-delta1e-06-clip0.1"
    p = get_preset("micro-dp0.5-delta1e-06-clip0.1")
    assert (p.dp_epsilon, p.dp_delta, p.dp_max_grad_norm) == (0.5, 1e-6, 0.1)
    assert replace(p, dp_epsilon=None, dp_delta=1e-5, dp_max_grad_norm=1.0) == PRESETS["micro"]
    assert math.isinf(get_preset("default-dpinf").dp_epsilon)
    ordinary = asdict(PRESETS["micro"])
    for k in ("dp_epsilon", "dp_delta", "dp_max_grad_norm", "dp_batch_size"):
        ordinary.pop(k)
    assert PRESETS["micro"].identity == ordinary  # the ordinary organisms keep their cache keys
    assert "dp_epsilon" in get_preset("micro-dp8").identity
    for bad in ("micro-dp0", "nano-dp8", "micro-dp8-delta2"):
        with pytest.raises(UserInputError):
            get_preset(bad)


def test_a_dp_organism_trains_and_accounts(tmp_path):
    pytest.importorskip("opacus")
    from unlearn_audit.organisms import build_model, concept_qa, fit, get_preset, train_tokenizer
    from unlearn_audit.subject.subject import Subject
    from unlearn_audit.world import build_world, corpus, world_config

    recipe = replace(get_preset("micro-dp8"), max_epochs=2, warmup_steps=5)
    world = build_world(world_config(recipe.world, 0))
    tok = train_tokenizer(corpus(world), recipe.vocab_size)
    subject = Subject(build_model(recipe, tok, 0), tok, "dp", answer_eos=True)
    stats = fit(subject, recipe, corpus(world), concept_qa(world), 0, "dp")["dp"]
    assert stats["documents"] == len(corpus(world))
    assert stats["sample_rate"] == pytest.approx(recipe.dp_batch_size / stats["documents"])
    assert stats["steps"] == stats["planned_steps"] == 2 * round(stats["documents"] / recipe.dp_batch_size)
    assert stats["epsilon"] == pytest.approx(epsilon_spent(stats["noise_multiplier"], stats["sample_rate"],
                                                           stats["steps"], 1e-5))
    assert 7.9 <= stats["epsilon"] <= 8.0


def test_dp_examples_are_whole_documents():
    """A DP example is one whole document (the privacy unit): EOS, every token, EOS; padding
    unlabelled. The micro world's longest documents exceed its packed seq_len (64)."""
    from unlearn_audit.organisms import document_examples, train_tokenizer
    from unlearn_audit.world import build_world, corpus, world_config

    docs = corpus(build_world(world_config("micro", 0)))
    tok = train_tokenizer(docs, 384)
    lengths = [len(ids) + 2 for ids in tok(docs, add_special_tokens=False)["input_ids"]]
    assert max(lengths) > 64
    ex = document_examples(tok, docs, 256)
    assert ex["attention_mask"].sum(1).tolist() == lengths
    assert int((ex["labels"] != -100).sum()) == sum(lengths)
    longest = lengths.index(max(lengths))
    assert tok.decode(ex["input_ids"][longest, 1:lengths[longest] - 1]) == docs[longest]
    with pytest.raises(UserInputError, match="positions"):
        document_examples(tok, docs, max(lengths) - 1)
