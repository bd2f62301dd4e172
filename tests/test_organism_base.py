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

# a recipe that suits a tiny base on two CPU cores (the defaults are TOFU's, for 7B models)
TINY = BaseRecipe(world="micro", lr=1e-3, weight_decay=0.0, batch_size=16, seq_len=64, warmup_steps=5,
                  max_epochs=12, target_acc=0.9)


@pytest.mark.slow
def test_full_model_knows_the_world_and_its_oracle_does_not(micro, tmp_path):
    """The base is a pretrained model that has never seen the removed concept (the micro
    organism's oracle: a real pretrained base has never seen the world's made-up names either).
    Fine-tuned on every concept it learns the removed one; fine-tuned without it, it does not."""
    _, base = micro
    full, oracle = based_organism(base.path, 0, recipe=TINY, cache_dir=tmp_path, device="cpu", dtype="float32")
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
    again, _ = based_organism(base.path, 0, recipe=TINY, cache_dir=tmp_path, device="cpu", dtype="float32")
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

    monkeypatch.setattr(organisms, "_fit", no_training)
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
