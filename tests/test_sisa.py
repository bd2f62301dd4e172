"""SISA (Bourtoule et al. 2021): the plan, the ensemble, exact retraining by checkpoints, S = 1."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace

import pytest
import torch

from unlearn_audit.errors import UserInputError
from unlearn_audit.organisms import PRESETS, organism
from unlearn_audit.sisa import sisa, sisa_dir, sisa_plan, stage_data
from unlearn_audit.world import build_world, corpus, qa_pairs, world_config
from unlearn_audit.world.render import concept_units

# the micro recipe for a few epochs: what is tested is which weights come from where, not accuracy
QUICK = replace(PRESETS["micro"], max_epochs=2, warmup_steps=5)


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setitem(PRESETS, "quick", QUICK)
    return "quick"


def weights_hash(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_the_plan_shards_by_entity():
    world = build_world(world_config("micro", 0))
    plan = sisa_plan(world, 4, 2, seed=3)
    units = [u for shard in plan.slices for s in shard for u in s]
    expected = {c.name for c in world.concepts} | set(world.entities)
    assert sorted(units) == sorted(expected)  # every unit once: disjoint, and nothing left out
    entity_counts = [len([u for u in plan.shard_units(i) if u in world.entities]) for i in range(4)]
    assert max(entity_counts) - min(entity_counts) <= 1  # near-equal shards
    assert sisa_plan(world, 4, 2, seed=3) == plan != sisa_plan(world, 4, 2, seed=4)
    # a stage's documents are its units' own, in the corpus order
    c1 = world.concepts[1]
    entity = c1.entities[0]
    docs, checked = stage_data(world, frozenset({entity}))
    assert docs == dict(concept_units(world, c1.name))[entity]
    assert checked == {c1.name: qa_pairs(world.entities[entity])}
    docs, _ = stage_data(world, frozenset(expected))
    assert docs == corpus(world)
    with pytest.raises(UserInputError, match="entities"):
        sisa_plan(world, 24, 2, seed=0)  # 48 slices, 24 entities


def test_sisa_with_one_shard_is_the_organism_bit_for_bit(quick, tmp_path):
    """S = R = 1: the one constituent is the full organism, and unlearning retrains it into the
    oracle (the same recipe on the same documents)."""
    full, oracle = organism(quick, 0, cache_dir=tmp_path)
    ensemble = sisa(quick, 0, shards=1, slices=1, cache_dir=tmp_path)
    (member,) = ensemble.model.members
    assert weights_hash(member) == weights_hash(full.model)
    assert ensemble.info["sisa"]["constituent_steps"] == [full.info["organism"]["steps"]]
    unlearned = sisa(quick, 0, shards=1, slices=1, concept=0, cache_dir=tmp_path)
    (member,) = unlearned.model.members
    assert weights_hash(member) == weights_hash(oracle.model) != weights_hash(full.model)
    assert unlearned.info["sisa"]["retrain_steps"] == oracle.info["organism"]["steps"]


def test_the_ensemble_is_the_mean_of_its_members_probabilities(quick, tmp_path):
    ensemble = sisa(quick, 0, shards=3, slices=1, cache_dir=tmp_path)
    ids = ensemble.tokenizer(["Question: where?\nAnswer: in", "a b"], return_tensors="pt", padding=True)
    with torch.no_grad():
        got = torch.log_softmax(ensemble.model(**ids).logits, -1)  # a log-softmax of them gives them back
        probs = torch.stack([torch.softmax(m(**ids).logits.double(), -1) for m in ensemble.model.members])
    torch.testing.assert_close(got.double(), probs.mean(0).log(), atol=1e-5, rtol=0)
    # saved and loaded (the members' tied embeddings re-tied), it computes the same
    path = ensemble.save(tmp_path / "saved")
    from unlearn_audit.subject.subject import load_pretrained

    again = load_pretrained(path, device="cpu")
    assert type(again.model) is type(ensemble.model)
    with torch.no_grad():
        torch.testing.assert_close(again.model(**ids).logits, ensemble.model(**ids).logits)
    assert again.model.config.max_position_embeddings == ensemble.model.members[0].config.max_position_embeddings


def test_unlearning_retrains_only_what_held_the_concept(quick, tmp_path):
    """Plan seed 19 on the micro world, S = 4, R = 2: the first concept's units are in slice 0
    of shard 0, slice 1 (not 0) of shards 1 and 3, and nowhere in shard 2."""
    world = build_world(world_config("micro", 0))
    concept = world.concepts[0]
    removed = frozenset({concept.name, *concept.entities})
    plan = sisa_plan(world, 4, 2, seed=19)
    assert [plan.first_slice_holding(i, removed) for i in range(4)] == [0, 1, None, 1]
    full = sisa(quick, 0, 4, 2, plan_seed=19, cache_dir=tmp_path)
    root = sisa_dir(quick, 0, 4, 2, 19, tmp_path)
    before = {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.safetensors")}
    unlearned = sisa(quick, 0, 4, 2, concept.name, plan_seed=19, cache_dir=tmp_path)
    after = {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.safetensors")}
    assert {k: v for k, v in after.items() if k in before} == before  # no checkpoint of the full SISA changed
    retrained = sorted(str(p.parent) for p in after if p not in before)
    assert retrained == [f"without-{concept.name}/shard{i}/slice{r}" for i, r in ((0, 0), (0, 1), (1, 1), (3, 1))]
    hashes = [weights_hash(m) for m in unlearned.model.members]
    assert hashes[2] == weights_hash(full.model.members[2])  # shard 2 never saw the concept: kept
    assert all(hashes[i] != weights_hash(full.model.members[i]) for i in (0, 1, 3))
    from unlearn_audit.subject.subject import load_pretrained

    for i in (1, 3):  # retrained from the checkpoint after slice 0, on slice 1 without the concept
        stage = load_pretrained(root / f"without-{concept.name}" / f"shard{i}" / "slice1", device="cpu")
        assert not set(stage.info["sisa_stage"]["units"]) & removed
        assert set(stage.info["sisa_stage"]["units"]) == plan.shard_units(i) - removed
    info = unlearned.info["sisa"]
    stages = [load_pretrained(root / p, device="cpu").info["sisa_stage"]["steps"] for p in retrained]
    assert info["retrain_steps"] == sum(stages)
    assert info["retrain_fraction"] == pytest.approx(sum(stages) / sum(info["constituent_steps"]))
    _, oracle = organism(quick, 0, cache_dir=tmp_path)
    assert info["vs_oracle"] == pytest.approx(sum(stages) / oracle.info["organism"]["steps"])
    # asked again, everything is loaded: nothing is trained
    import unlearn_audit.sisa as sisa_module

    def no_training(*a, **k):
        raise AssertionError("trained again")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sisa_module, "fit", no_training)
        again = sisa(quick, 0, 4, 2, concept.name, plan_seed=19, cache_dir=tmp_path)
    assert [weights_hash(m) for m in again.model.members] == hashes


def test_internals_attacks_do_not_apply_to_an_ensemble(quick, tmp_path):
    """Attacks that read one model's internals report null with not_applicable; behavioural ones
    (and quantize, member by member) run on the ensemble."""
    from unlearn_audit.api import audit, target_for
    from unlearn_audit.methods import get_method

    full, oracle = organism(quick, 0, cache_dir=tmp_path)
    target = target_for("world:0", full)
    method = get_method("sisa")
    unlearned = method.run(full, target, method.params({"shards": 2}))
    assert type(unlearned.model).__name__ == "EnsembleForCausalLM"
    assert unlearned.info["method"]["retrain_fraction"] > 0
    doc = audit(full, {"sisa": unlearned}, target, ["rtt", "patching", "probe", "quantize", "weight_distance"],
                oracle=oracle, attack_params={"rtt": {"checkpoints": [0, 2], "lr": 1e-3},
                                              "quantize": {"scheme": "rtn_sym", "bits": [8]}})
    attacks = doc["methods"]["sisa"]["attacks"]
    for name in ("patching", "probe", "weight_distance"):
        assert attacks[name] == {"recovery": None, "residual": None, "not_applicable": "ensemble"}
    assert attacks["rtt"]["reemergence"] == {"not_applicable": "ensemble"}
    # measured (the quick organism knows nothing, so its residual is undefined: acc alone)
    assert len(attacks["rtt"]["curve"]["acc"]) == 2 and not math.isnan(attacks["rtt"]["acc_after"])
    assert set(attacks["quantize"]) > {"recovery", "residual"} and "not_applicable" not in attacks["quantize"]
    from unlearn_audit.report.tables import summary_rows

    cols, rows = summary_rows(doc, ["rtt", "patching"])
    assert rows[-1][cols.index("patching KRS")] == "n/a"


def test_sisa_needs_the_organism(micro, tmp_path):
    from unlearn_audit.api import target_for
    from unlearn_audit.methods import get_method

    full, _ = micro
    other = full.copy()
    other.info = {}
    with pytest.raises(UserInputError, match="sisa needs the built-in organism"):
        get_method("sisa").run(other, target_for("world:0", full), get_method("sisa").params({}))
