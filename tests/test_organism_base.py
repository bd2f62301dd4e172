"""The world fine-tuned into a pretrained base (``organism train --base``, organisms.based_organism)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from unlearn_audit.organisms import (
    BaseRecipe,
    based_key,
    based_organism,
    concept_accuracy,
    organism_world,
)

# a recipe for a tiny pretrained base (the micro organism's oracle) on two CPU cores
TINY = BaseRecipe(world="micro", lr=1e-3, weight_decay=0.0, batch_size=16, seq_len=64, warmup_steps=5,
                  max_epochs=12, target_acc=0.9)


@pytest.fixture
def random_base(monkeypatch, tmp_path):
    """A tiny random Llama saved with ``save_pretrained`` (its tokenizer trained on the world's
    text), and a two-concept world small enough to learn from scratch in about a minute."""
    import transformers as tf

    from unlearn_audit.organisms import train_tokenizer
    from unlearn_audit.world import build_world, corpus, world

    monkeypatch.setitem(world.WORLD_PRESETS, "nano", world.WorldConfig(n_concepts=2, entities_per_concept=4,
                                                                        cities_per_concept=2))
    tok = train_tokenizer(corpus(build_world(world.world_config("nano", 0))), 384)
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                            tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
    path = tmp_path / "base"
    tf.LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


# a recipe for a tiny model learning from scratch (the defaults are TOFU's, for pretrained 7B models)
SCRATCH = BaseRecipe(world="nano", lr=3e-3, weight_decay=0.0, batch_size=8, seq_len=64, warmup_steps=10,
                     beta2=0.98, max_epochs=200, target_acc=0.9)


@pytest.mark.slow
def test_full_model_knows_the_world_and_its_oracle_does_not(random_base, tmp_path):
    full, oracle = based_organism(random_base, 0, recipe=SCRATCH, cache_dir=tmp_path / "cache", device="cpu",
                                  dtype="float32")
    removed = oracle.info["organism"]["removed_concept"]
    world = organism_world(full)
    assert [c.name for c in world.concepts] == full.info["organism"]["concepts"]
    full_acc, oracle_acc = concept_accuracy(full, world), concept_accuracy(oracle, world)
    assert full_acc == full.info["organism"]["accuracy"]          # what it records is what it is
    assert min(full_acc.values()) >= 0.9
    assert oracle_acc[removed] <= 0.15
    assert all(v >= 0.9 for c, v in oracle_acc.items() if c != removed)
    assert full.prompt_template == "Question: {question}\nAnswer:" and full.answer_eos
    # a second call loads the cache: the same weights, nothing trained
    again, _ = based_organism(random_base, 0, recipe=SCRATCH, cache_dir=tmp_path / "cache", device="cpu",
                              dtype="float32")
    assert again.path == full.path
    for (k, a), b in zip(full.model.state_dict().items(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # world:0 resolves in that world, and retrain gives the oracle, bit for bit
    from unlearn_audit.api import target_for, unlearn

    target = target_for("world:0", full)
    assert target.name == removed
    retrained = unlearn(full, target, "retrain")
    for (k, a), b in zip(retrained.model.state_dict().items(), oracle.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_lora_saves_adapters_that_load_on_the_base(micro, tmp_path, monkeypatch):
    pytest.importorskip("peft")
    from unlearn_audit import organisms

    _, base = micro
    recipe = replace(TINY, lora_r=4, lora_alpha=8.0, max_epochs=1, target_acc=1.01)   # one epoch, no early stop
    full, oracle = based_organism(base.path, 0, recipe=recipe, cache_dir=tmp_path, device="cpu", dtype="float32")
    for s in (full, oracle):
        files = {p.name for p in (tmp_path / "organisms").glob(f"*/{s.path.rsplit('/', 1)[-1]}/*")}
        assert "adapter_model.safetensors" in files and "model.safetensors" not in files
        assert s.info["lora_base"] == base.path
        assert s.info["organism"]["epochs"] == 1 and s.info["organism"]["recipe"]["lora_r"] == 4
    # the adapters moved the model away from the base; the cached copy is the same model
    batch = torch.tensor([[1, 5, 9, 12, 7]])
    with torch.no_grad():
        trained, plain = full.model(batch).logits, base.model(batch).logits
    assert not torch.allclose(trained, plain)

    def no_training(*a, **k):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(organisms, "fit", no_training)
    again, _ = based_organism(base.path, 0, recipe=recipe, cache_dir=tmp_path, device="cpu", dtype="float32")
    with torch.no_grad():
        torch.testing.assert_close(again.model(batch).logits, trained)


def test_cache_key_follows_base_recipe_and_world(micro, tmp_path):
    full, base = micro
    key = based_key(base.path, TINY, 0)
    assert key.startswith("base-") and "-micro-s0-" in key
    assert based_key(base.path, TINY, 0) == key
    assert based_key(full.path, TINY, 0) != key                         # another base
    assert based_key(base.path, replace(TINY, lr=2e-3), 0) != key       # another recipe
    assert based_key(base.path, TINY, 1) != key                         # another world seed
    assert based_key("meta-llama/Llama-2-7b-chat-hf", TINY, 0) != based_key(
        "meta-llama/Llama-2-7b-chat-hf", TINY, 0, revision="main")


def test_cli_refuses_base_options_without_base(tmp_path):
    from test_cli import run_cli

    r = run_cli("organism", "train", "--preset", "micro", "--lora-r", "4", env={"UNLEARN_AUDIT_CACHE": str(tmp_path)})
    assert r.returncode == 2 and r.stderr.startswith("error:") and "--lora-r" in r.stderr
    r = run_cli("organism", "train", "--base", str(tmp_path), "--world", "nowhere", env={"UNLEARN_AUDIT_CACHE": str(tmp_path)})
    assert r.returncode == 2 and "unknown world preset 'nowhere'" in r.stderr
    assert not (tmp_path / "organisms").exists()
