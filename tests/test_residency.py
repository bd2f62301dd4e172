"""Only the models a step uses are on the device (subject/residency.py), and the frozen
original's outputs that a loss needs are precomputed (FineTuneMethod.reference_outputs): both
change where tensors are, never a number."""

from __future__ import annotations

import gc
import glob
import os

import pytest
import torch

from unlearn_audit.api import unlearn
from unlearn_audit.methods import get_method
from unlearn_audit.subject import residency
from unlearn_audit.subject.residency import resident


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def spill_files(d) -> list[str]:
    return glob.glob(os.path.join(d, "unlearn-audit-offload-*"))


@pytest.fixture
def disk(monkeypatch, tmp_path):
    monkeypatch.setenv("UNLEARN_AUDIT_OFFLOAD", "disk")
    monkeypatch.setenv("UNLEARN_AUDIT_OFFLOAD_DIR", str(tmp_path))
    return tmp_path


def test_resident_moves_the_other_models_off_and_back_bit_for_bit(micro, disk):
    original, oracle = micro
    before = {"original": state(original.model), "oracle": state(oracle.model)}
    copy = original.copy()
    with resident(copy.model):
        assert all(p.numel() == 0 for p in original.model.parameters())
        assert all(p.numel() == 0 for p in oracle.model.parameters())
        assert all(p.numel() > 0 for p in copy.model.parameters())
        assert len(spill_files(disk)) == 1  # one file for what one block moves
        with resident(original.model):  # nested: brings back what the outer block moved off
            assert same(state(original.model), before["original"])
            assert all(p.numel() == 0 for p in copy.model.parameters())
        assert all(p.numel() == 0 for p in original.model.parameters())
        assert all(p.numel() > 0 for p in copy.model.parameters())
    assert same(state(original.model), before["original"]) and same(state(oracle.model), before["oracle"])
    assert spill_files(disk) == []


def test_resident_keeps_what_a_resident_model_shares(micro, disk):
    original = micro[0]
    shares = original.copy()
    shared = next(iter(original.model.parameters()))
    first_name = next(n for n, _ in shares.model.named_parameters())
    module_path, _, attr = first_name.rpartition(".")
    shares.model.get_submodule(module_path).register_parameter(attr, shared)  # as LoRA's frozen base is
    with resident(shares.model):
        assert shared.numel() > 0
        assert sum(p.numel() == 0 for p in original.model.parameters()) == len(list(original.model.parameters())) - 1


def test_nothing_moves_without_an_accelerator_by_default_or_under_none(micro, monkeypatch):
    original, oracle = micro
    for mode in ("auto", "none"):
        monkeypatch.setenv("UNLEARN_AUDIT_OFFLOAD", mode)
        with resident(original.model):
            assert all(p.numel() > 0 for p in oracle.model.parameters())


def test_a_bad_offload_mode_is_a_user_error(micro, monkeypatch):
    from unlearn_audit.errors import UserInputError

    monkeypatch.setenv("UNLEARN_AUDIT_OFFLOAD", "gpu2")
    with pytest.raises(UserInputError, match="UNLEARN_AUDIT_OFFLOAD='gpu2'"):
        with resident(micro[0].model):
            pass


@pytest.mark.parametrize("name", ["kl", "npo_kl", "rmu"])
def test_precomputed_reference_outputs_equal_the_live_ones(micro, micro_target, name):
    # the Done-when of issue 14: KL (and RMU) against precomputed reference outputs equals the
    # loss against the live reference model
    from unlearn_audit.methods.base import with_reference_outputs

    original = micro[0]
    method = get_method(name)
    params = method.params({"steps": 3, "batch_size": 4})
    method.setup(original, micro_target, params)
    model = original.copy().model
    with torch.no_grad():  # a different model than the reference, so the KL is not 0
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    planned = [b for _, b in zip(range(3), method.batches(original, micro_target, params), strict=False)]
    precomputed = list(with_reference_outputs(iter(planned), 3,
                                              lambda b: method.reference_outputs(original.model, b, params)))
    key = "ref_hidden" if name == "rmu" else "ref_logits"
    for b, pre in zip(planned, precomputed, strict=True):
        assert key not in b["retain"] and key in pre["retain"]
        a = float(method.loss(model, b, original.model, params).detach())
        c = float(method.loss(model, pre, original.model, params).detach())
        assert a == pytest.approx(c, abs=1e-6, rel=0) and abs(a) > 1e-4


@pytest.mark.parametrize("name", ["kl", "npo_kl", "rmu", "gradient_difference", "whp"])
def test_the_original_is_off_the_device_while_its_copy_trains_and_nothing_changes(micro, micro_target, name,
                                                                                 monkeypatch, tmp_path):
    original, oracle = micro
    before = state(original.model)
    args = {"steps": 3, "reinforce_steps": 2} if name == "whp" else {"steps": 3}
    args = {k: v for k, v in args.items() if k in get_method(name).Params.model_fields}
    monkeypatch.setenv("UNLEARN_AUDIT_OFFLOAD", "none")
    kept = unlearn(original, micro_target, name, **args)

    seen = []
    import unlearn_audit.training.loop as loop

    step_point = loop.faults.point

    def point(where):  # after every optimiser step: where are the original and the oracle?
        if where == "step":
            seen.append((sum(p.numel() for p in original.model.parameters()),
                         sum(p.numel() for p in oracle.model.parameters())))
        step_point(where)

    monkeypatch.setattr(loop.faults, "point", point)
    monkeypatch.setenv("UNLEARN_AUDIT_OFFLOAD", "disk")
    monkeypatch.setenv("UNLEARN_AUDIT_OFFLOAD_DIR", str(tmp_path))
    moved = unlearn(original, micro_target, name, **args)
    assert seen and all(s == (0, 0) for s in seen)
    assert same(state(moved.model), state(kept.model))
    assert same(state(original.model), before) and spill_files(tmp_path) == []
    assert len(residency._AWAY) == 0


CHEAP_ATTACK = {"checkpoints": [0, 2], "bootstrap": 0, "reemergence": True, "max_questions": 4,
                "max_new_tokens": 4, "shots": [0, 1], "bits": [8], "alphas": [0.0, 1.0]}


def test_every_attack_measures_one_model_at_a_time_with_the_same_numbers(micro, micro_target, monkeypatch, tmp_path):
    from unlearn_audit.attacks import attack_names, get_attack

    original, oracle = micro
    monkeypatch.setenv("UNLEARN_AUDIT_OFFLOAD", "none")
    unlearned = unlearn(original, micro_target, "gradient_ascent", steps=2)
    models = {"original": original, "oracle": oracle, "unlearned": unlearned}
    names = attack_names()
    params = {n: get_attack(n).params({k: v for k, v in CHEAP_ATTACK.items() if k in get_attack(n).Params.model_fields})
              for n in names}

    def run_all():
        return {n: get_attack(n).run(original, {"ga": unlearned}, oracle, micro_target, params[n]) for n in names}

    kept = run_all()
    on_device: list[tuple[str, str, set]] = []
    for n in names:
        cls = type(get_attack(n))

        def measure(self, subject, setup, p, role, _measure=cls.measure):
            on_device.append((self.name, role, {k for k, s in models.items()
                                                if all(q.numel() for q in s.model.parameters())}))
            return _measure(self, subject, setup, p, role)

        monkeypatch.setattr(cls, "measure", measure)
    monkeypatch.setenv("UNLEARN_AUDIT_OFFLOAD", "disk")
    monkeypatch.setenv("UNLEARN_AUDIT_OFFLOAD_DIR", str(tmp_path))
    moved = run_all()
    assert moved == kept
    assert {a for a, _, _ in on_device} == set(names)
    for attack, role, resident_now in on_device:
        assert resident_now == {role}, (attack, role)
    assert spill_files(tmp_path) == [] and len(residency._AWAY) == 0


def test_parameters_that_share_storage_come_back_sharing_it(micro, disk):
    from unlearn_audit.subject.lora import copy_sharing
    from unlearn_audit.subject.subject import Subject

    original = micro[0]
    sharing = Subject(copy_sharing(original.model, lambda p: True), original.tokenizer, "sharing")
    other = original.copy()
    ptrs = [p.data_ptr() for p in original.model.parameters()]
    assert [p.data_ptr() for p in sharing.model.parameters()] == ptrs
    with resident(other.model):  # both away: one copy of each storage in the file
        assert all(p.numel() == 0 for p in sharing.model.parameters())
    assert [p.data_ptr() for p in sharing.model.parameters()] == [p.data_ptr() for p in original.model.parameters()]
    with resident(sharing.model):  # one resident: the storage it shares stays
        assert [p.data_ptr() for p in original.model.parameters()] == [p.data_ptr() for p in sharing.model.parameters()]


def test_off_device_at_rest_a_model_is_on_only_in_a_block_that_names_it_or_made_it(micro, disk):
    original, oracle = micro
    kept = {"original": state(original.model), "oracle": state(oracle.model)}

    def on(model) -> bool:
        return all(p.numel() for p in model.parameters())

    with residency.off_device_at_rest():
        assert not on(original.model) and not on(oracle.model)
        with resident(original.model):
            assert on(original.model) and not on(oracle.model)
            made = original.copy()  # made inside: part of the block's work
            assert on(made.model)
            with resident(made.model):
                assert on(made.model) and not on(original.model)
            assert on(made.model) and on(original.model) and not on(oracle.model)
        assert not on(original.model) and not on(made.model)
    assert on(original.model) and on(oracle.model) and on(made.model)  # every model back
    assert same(state(original.model), kept["original"]) and same(state(oracle.model), kept["oracle"])
    assert same(state(made.model), kept["original"])
    assert spill_files(disk) == [] and len(residency._AWAY) == 0


def test_a_study_keeps_no_model_on_the_device_between_its_steps_and_its_numbers(matrix_reference, disk, tmp_path,
                                                                                monkeypatch):
    """The runner's cells (unlearn, evaluate, attack) under disk offload: before every attack no
    model is on the device, and results.json equals the run that moved nothing."""
    import json

    from matrix import without_timings, write_experiment

    from unlearn_audit import faults
    from unlearn_audit.experiment.config import load_experiment
    from unlearn_audit.experiment.runner import run_experiment

    between: list[int] = []
    point = faults.point

    def counting(name):
        if name == "attack":
            between.append(sum(all(p.numel() for p in m.parameters()) for m in list(residency._TRACKED)))
        point(name)

    monkeypatch.setattr(faults, "point", counting)
    exp, text = load_experiment(write_experiment(tmp_path / "exp.yaml", tmp_path / "run"))
    run = run_experiment(exp, text)
    assert between and set(between) == {0}
    moved = json.loads((tmp_path / "run" / "results.json").read_text())
    kept = json.loads((matrix_reference[0] / "results.json").read_text())
    assert without_timings(moved) == without_timings(kept)
    gc.collect()  # the cells' unlearned models, discarded while away, take their copies with them
    assert run.failed == {} and len(residency._AWAY) == 0 and spill_files(disk) == []
