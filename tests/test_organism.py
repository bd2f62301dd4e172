import time

import pytest

from unlearn_audit import organisms as organism_module
from unlearn_audit.errors import UserInputError
from unlearn_audit.organisms import cache_root, organism, organism_key


def test_cache_hit_skips_training(micro, cache_dir, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("trained again despite a warm cache")

    monkeypatch.setattr(organism_module, "fit", boom)
    start = time.perf_counter()
    full, oracle = organism("micro", 0, cache_dir=cache_dir)
    assert time.perf_counter() - start < 10
    assert full.info["organism"]["accuracy"] == micro[0].info["organism"]["accuracy"]
    assert oracle.info["organism"]["removed_concept"] == micro[0].info["organism"]["concepts"][0]


def test_organism_metadata(micro):
    full, oracle = micro
    f, o = full.info["organism"], oracle.info["organism"]
    assert f["kind"] == "full" and o["kind"] == "oracle"
    assert f["reached_target"] and o["reached_target"]
    assert min(f["accuracy"].values()) >= 0.95
    removed = o["removed_concept"]
    assert o["accuracy"][removed] <= 0.15
    assert full.answer_eos and full.tokenizer is not None
    assert f["params"] == sum(p.numel() for p in full.model.parameters())


def test_key_depends_on_preset_and_seed():
    assert organism_key("micro", 0) != organism_key("micro", 1)
    assert organism_key("micro", 0) != organism_key("default", 0)


def test_key_is_the_hash_of_the_recipe_and_names_the_cache_entry(micro, cache_dir, monkeypatch):
    """The key is the documented hash of (preset, world config, seed, cache version), computed
    here by hand; the cached organism lies under it; and any change to the recipe (a preset
    field, the cache version) moves it, so a stale model is never reused."""
    import hashlib
    import json
    from dataclasses import asdict, replace

    from unlearn_audit.world import world_config

    preset = organism_module.get_preset("micro")
    # an ordinary organism's key holds no DP field (they came later; its cached models stay valid)
    fields = {k: v for k, v in asdict(preset).items() if not k.startswith("dp_")}
    blob = json.dumps({"preset": fields, "world": asdict(world_config(preset.world, 0)), "seed": 0,
                       "version": organism_module.CACHE_VERSION}, sort_keys=True)
    key = organism_key("micro", 0)
    assert key == f"micro-s0-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
    assert (cache_root(cache_dir) / "organisms" / key).is_dir()
    monkeypatch.setattr(organism_module, "CACHE_VERSION", organism_module.CACHE_VERSION + 1)
    assert organism_key("micro", 0) != key
    monkeypatch.undo()
    monkeypatch.setitem(organism_module.PRESETS, "micro", replace(preset, hidden_size=preset.hidden_size + 1))
    assert organism_key("micro", 0) != key


def test_bad_preset_and_unwritable_cache(tmp_path):
    with pytest.raises(UserInputError, match="unknown organism preset"):
        organism("huge", cache_dir=tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserInputError, match="not writable"):
        cache_root(blocker / "cache")
