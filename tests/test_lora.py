"""LoRA through PEFT (issue 14, item 3): adapters train, the base is shared and bit-identical."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")

from unlearn_audit.api import unlearn  # noqa: E402
from unlearn_audit.errors import UserInputError  # noqa: E402
from unlearn_audit.organisms import load_subject  # noqa: E402
from unlearn_audit.subject.lora import LoraSettings, is_peft  # noqa: E402

FAMILIES = ["llama", "gpt2", "gpt_neox", "qwen2", "olmo", "phi"]
FINE_TUNING = ["gradient_ascent", "gradient_difference", "kl", "npo", "npo_gd", "npo_kl", "simnpo", "dpo", "rmu"]


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _base_and_adapters(model):
    base = {n: p for n, p in model.named_parameters() if "lora_" not in n}
    adapters = {n: p for n, p in model.named_parameters() if "lora_" in n}
    return base, adapters


def _check_only_adapters_moved(original, trained, before):
    """The original is untouched; the trained copy's base shares its storage and is equal; some
    adapter weights moved; nothing but adapters is trainable."""
    assert all(torch.equal(p, before[n]) for n, p in original.named_parameters())
    base, adapters = _base_and_adapters(trained)
    shared = {p.data_ptr() for p in original.parameters()}
    assert adapters and all(p.data_ptr() in shared and not p.requires_grad for p in base.values())
    assert all(p.requires_grad for p in adapters.values())
    assert any(float(p.detach().abs().max()) > 0 for n, p in adapters.items() if "lora_B" in n)


@pytest.fixture(scope="module")
def family_subjects(tiny_model_dirs):
    return {f: load_subject(tiny_model_dirs[f], device="cpu", dtype="float32") for f in FAMILIES}


# every method, and every family, once: the methods cycle through the families
@pytest.mark.parametrize(("method", "family"), [(m, FAMILIES[i % len(FAMILIES)]) for i, m in enumerate(FINE_TUNING)])
def test_lora_unlearning_trains_adapters_only(family_subjects, micro_target, family, method):
    s = family_subjects[family]
    before = _weights(s.model)
    params = {"steps": 2, "lr": 1e-2, "lora_r": 4, "batch_size": 4, "max_length": 64}  # GPT-2 here: 128 positions
    if method == "rmu":
        params["layer"] = 0  # two-layer models: the band is layer 0 only
    u = unlearn(s, micro_target, method, **params)
    assert is_peft(u.model) and u.info["lora_base"] == s.path
    _check_only_adapters_moved(s.model, u.model, before)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_relearning_trains_adapters_on_the_shared_weights(family_subjects, micro_target, family):
    from unlearn_audit.attacks import get_attack
    from unlearn_audit.attacks.relearn import RELEARNING, _train_data, relearn_curve
    from unlearn_audit.metrics.qa import EvalSuite

    s = family_subjects[family]
    before = _weights(s.model)
    params = get_attack("rtt").params({"checkpoints": [0, 3], "lr": 1e-2, "lora_r": 4, "batch_size": 4})
    seen = []
    curve = relearn_curve(s, _train_data(s, micro_target, RELEARNING["rtt"]), EvalSuite(s, {"h": micro_target.forget_heldout_qa}),
                          params, 0, "rtt", on_checkpoint=seen.append)
    assert curve["steps"] == [0, 3] and len(seen) == 2 and is_peft(seen[-1])
    _check_only_adapters_moved(s.model, seen[-1], before)


def test_a_lora_copy_computes_the_model_until_trained_and_copies_share_the_base(family_subjects):
    s = family_subjects["llama"]
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        expected = s.model(ids).logits
        lora = s.copy(lora=LoraSettings(r=4, alpha=8.0))
        assert torch.equal(lora.model(ids).logits, expected)        # B = 0: the same function
        for n, p in lora.model.named_parameters():
            if "lora_B" in n:
                p.add_(0.01)
        again = lora.copy()                                          # adapters copied, base shared
    base, adapters = _base_and_adapters(again.model)
    first_base, first_adapters = _base_and_adapters(lora.model)
    assert all(base[n].data_ptr() == first_base[n].data_ptr() for n in base)
    assert all(adapters[n].data_ptr() != first_adapters[n].data_ptr() and torch.equal(adapters[n], first_adapters[n])
               for n in adapters)
    with torch.no_grad():
        assert not torch.equal(again.model(ids).logits, expected)


def test_lora_models_save_as_adapters_or_merged_and_load_back(family_subjects, micro_target, tmp_path):
    from unlearn_audit.subject import load_pretrained

    s = family_subjects["qwen2"]
    u = unlearn(s, micro_target, "gradient_ascent", steps=2, lr=1e-2, lora_r=4, batch_size=4)
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        expected = u.model(ids).logits
    u.save(tmp_path / "adapters")
    assert (tmp_path / "adapters" / "adapter_config.json").is_file()
    assert not (tmp_path / "adapters" / "model.safetensors").exists()
    back = load_pretrained(tmp_path / "adapters", device="cpu", dtype="float32")
    u.save(tmp_path / "merged", merge=True)
    merged = load_pretrained(tmp_path / "merged", device="cpu", dtype="float32")
    assert is_peft(back.model) and not is_peft(merged.model) and merged.info["lora_merged"]
    with torch.no_grad():
        assert torch.allclose(back.model(ids).logits, expected, atol=1e-6)
        assert torch.allclose(merged.model(ids).logits, expected, atol=1e-5)
        assert not torch.allclose(s.model(ids).logits, expected, atol=1e-5)   # the adapters did something
    # merging copied the base: the subject the adapters were trained on is unchanged
    assert torch.equal(next(iter(s.model.parameters())), next(iter(load_subject(s.path, device="cpu").model.parameters())))


def test_lora_refusals(family_subjects, micro_target, monkeypatch):
    import builtins

    s = family_subjects["llama"]
    u = unlearn(s, micro_target, "gradient_ascent", steps=1, lora_r=2, batch_size=4)
    with pytest.raises(UserInputError, match="carries LoRA adapters"):
        unlearn(u, micro_target, "gradient_ascent", steps=1)
    with pytest.raises(UserInputError, match="lora_targets"):
        unlearn(s, micro_target, "gradient_ascent", steps=1, lora_r=2, lora_targets=["no_such_module"])
    real_import = builtins.__import__

    def no_peft(name, *args, **kwargs):
        if name == "peft":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    with pytest.raises(UserInputError, match=r"pip install 'unlearn-audit\[peft\]'"):
        unlearn(s, micro_target, "gradient_ascent", steps=1, lora_r=2)


def test_sites_and_the_logit_lens_resolve_through_the_peft_wrapper(family_subjects, micro_target):
    from unlearn_audit.subject.sites import Site, module_of, num_layers, unembed, value_vectors

    s = family_subjects["llama"]
    u = unlearn(s, micro_target, "gradient_ascent", steps=2, lr=1e-2, lora_r=4, batch_size=4)
    assert num_layers(u.model) == num_layers(s.model) == 2
    assert type(module_of(u.model, Site("mlp_coefficients", 1))).__name__ == "Linear"  # peft's lora.Linear
    resid = torch.randn(1, 3, 32)
    assert unembed(u.model, resid).shape == unembed(s.model, resid).shape
    # the value vectors of a LoRA down projection include the adapters' update
    delta = value_vectors(u.model, 1) - value_vectors(s.model, 1)
    assert float(delta.detach().abs().max()) > 0


@pytest.mark.parametrize("offload", ["auto", "disk"])
def test_weight_attacks_measure_a_lora_subject_merged_and_leave_the_shared_base(micro, micro_target, offload,
                                                                                monkeypatch, tmp_path):
    """Merged in place (no copy of the model), the adapters' update is seen exactly as through a
    merged copy; the shared base and the adapters are bit-identical after, and unmerged."""
    from unlearn_audit.attacks import get_attack

    monkeypatch.setenv("UNLEARN_AUDIT_OFFLOAD", offload)
    monkeypatch.setenv("UNLEARN_AUDIT_OFFLOAD_DIR", str(tmp_path))
    s = micro[0]  # the trained organism: its accuracies are not all zero, so they can differ
    u = unlearn(s, micro_target, "gradient_ascent", steps=3, lr=3e-3, lora_r=4)
    before, adapters = _weights(s.model), _weights(u.model)
    measured = {}
    for name, params in (("quantize", {"bits": [8]}), ("weight_distance", {"alphas": [0.0, 1.0]})):
        attack = get_attack(name)
        p = attack.params(params)
        setup = attack.setup(s, micro_target, p)
        measured[name] = attack._measure(u, setup, p, "unlearned")
        assert measured[name] == attack.measure(u.copy(merge=True), setup, p, "unlearned")
        assert all(torch.equal(q, before[n]) for n, q in s.model.named_parameters())
        assert all(torch.equal(q, adapters[n]) for n, q in u.model.named_parameters())
        assert not any(getattr(m, "merged", False) for m in u.model.modules())
    assert measured["weight_distance"]["l2"] > 0   # the adapters' update, seen through the merged weights


def test_relearning_a_loaded_adapter_model_trains_its_adapters_or_a_merged_copy(family_subjects, micro_target, tmp_path):
    from unlearn_audit.attacks import get_attack
    from unlearn_audit.attacks.relearn import RELEARNING, _train_data, relearn_curve
    from unlearn_audit.metrics.qa import EvalSuite
    from unlearn_audit.subject import load_pretrained

    s = family_subjects["llama"]
    unlearn(s, micro_target, "gradient_ascent", steps=2, lr=1e-2, lora_r=4, batch_size=4).save(tmp_path / "u")
    u = load_pretrained(tmp_path / "u", device="cpu", dtype="float32")
    before = _weights(u.model)
    data = _train_data(u, micro_target, RELEARNING["rtt"])
    suite = EvalSuite(u, {"h": micro_target.forget_heldout_qa})
    for lora_r in (4, 0):
        params = get_attack("rtt").params({"checkpoints": [2], "lr": 1e-2, "lora_r": lora_r, "batch_size": 4})
        seen = []
        relearn_curve(u, data, suite, params, 0, "rtt", on_checkpoint=seen.append)
        trained = seen[-1]
        if lora_r:  # the subject's own adapters, trained further; its base shared
            _, adapters = _base_and_adapters(trained)
            assert is_peft(trained) and any(not torch.equal(p, before[n]) for n, p in adapters.items())
        else:       # full relearning: a merged copy, every weight trained
            assert not is_peft(trained) and all(p.requires_grad for p in trained.parameters())
        assert all(torch.equal(p, before[n]) for n, p in u.model.named_parameters())


def test_lora_on_a_bf16_model_trains_float32_adapters_and_leaves_the_bf16_base(family_subjects, micro_target):
    s = family_subjects["llama"].copy()
    s.model.to(torch.bfloat16)
    before = _weights(s.model)
    u = unlearn(s, micro_target, "npo_gd", steps=2, lr=1e-2, lora_r=4, batch_size=4, gradient_checkpointing=True)
    base, adapters = _base_and_adapters(u.model)
    # PEFT keeps adapters in float32 on a bf16 base: nothing for the loop's master weights to do
    assert {p.dtype for p in adapters.values()} == {torch.float32}
    assert {p.dtype for p in base.values()} == {torch.bfloat16}
    _check_only_adapters_moved(s.model, u.model, before)
