"""Sites and hooks on random-init tiny models of every supported family."""

import pytest
import torch
from conftest import FAMILIES

from unlearn_audit.errors import UserInputError
from unlearn_audit.organisms import load_subject
from unlearn_audit.subject.sites import (
    ACTIVATION_KINDS,
    Site,
    architecture,
    hooks,
    module_of,
    num_layers,
    patched_weights,
    record,
    value_vectors,
)


@pytest.fixture(scope="module")
def models(tiny_model_dirs):
    return {f: load_subject(tiny_model_dirs[f], device="cpu").model for f in FAMILIES}


def _ids():
    return torch.randint(2, 300, (2, 9), generator=torch.Generator().manual_seed(0))


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("family", FAMILIES)
def test_patching_own_activations_reproduces_logits(models, family):
    model, ids = models[family], _ids()
    with torch.no_grad():
        clean = model(ids).logits
        sites = [Site(k, layer) for k in ACTIVATION_KINDS for layer in range(num_layers(model))]
        cache = record(model, sites, lambda: model(ids))
        assert set(cache) == set(sites)
        with hooks(model, {s: (lambda x, s=s: cache[s]) for s in sites}):
            patched = model(ids).logits
    torch.testing.assert_close(patched, clean, rtol=0, atol=0)
    assert _no_hooks(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_sites_have_the_documented_shapes_and_matter(models, family):
    model, ids = models[family], _ids()
    d_model = model.get_input_embeddings().weight.shape[1]
    vv = value_vectors(model, 0)
    with torch.no_grad():
        cache = record(model, [Site(k, 0) for k in ACTIVATION_KINDS], lambda: model(ids))
        for kind, x in ((k, cache[Site(k, 0)]) for k in ACTIVATION_KINDS):
            width = vv.shape[0] if kind == "mlp_coefficients" else d_model
            assert x.shape == (2, 9, width), kind
        # the coefficients times the value vectors are the down projection's output
        down = module_of(model, Site("mlp_coefficients", 0))
        bias = down.bias if getattr(down, "bias", None) is not None else 0
        torch.testing.assert_close(down(cache[Site("mlp_coefficients", 0)]),
                                   cache[Site("mlp_coefficients", 0)] @ vv + bias)
        # zeroing a site changes the output: the hook is really in the forward path
        clean = model(ids).logits
        for kind in ACTIVATION_KINDS:
            with hooks(model, {Site(kind, 0): torch.zeros_like}):
                assert not torch.allclose(model(ids).logits, clean), kind


def test_hooks_removed_on_error_and_bad_sites_register_nothing(models):
    model = models["llama"]
    with pytest.raises(RuntimeError, match="boom"):
        with hooks(model, {Site("mlp_out", 1): lambda x: x}):
            raise RuntimeError("boom")
    assert _no_hooks(model)
    with pytest.raises(UserInputError, match="layer 7 out of range: the model has 2 layers"):
        with hooks(model, {Site("mlp_out", 0): lambda x: x, Site("mlp_out", 7): lambda x: x}):
            pass
    assert _no_hooks(model)
    with pytest.raises(UserInputError, match="unknown site 'mlp'"):
        Site("mlp", 0)
    with pytest.raises(UserInputError, match="patched_weights"):
        with hooks(model, {Site("mlp_value_vectors", 0): lambda x: x}):
            pass


def test_patched_weights_restores(models):
    model, ids = models["gpt2"], _ids()  # Conv1D layout
    before = value_vectors(model, 1).clone()
    with torch.no_grad():
        clean = model(ids).logits
        with patched_weights(model, {1: torch.zeros_like(before)}):
            assert torch.count_nonzero(value_vectors(model, 1)) == 0
            assert not torch.allclose(model(ids).logits, clean)
        assert torch.equal(value_vectors(model, 1), before)
        torch.testing.assert_close(model(ids).logits, clean, rtol=0, atol=0)


def test_fallback_and_unsupported():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = torch.nn.Linear(4, 4)
            self.feed_forward = torch.nn.Sequential()
            self.feed_forward.w2 = torch.nn.Linear(8, 4)

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(), Block()])

    arch = architecture(Odd())
    assert (arch.layers, arch.attn, arch.mlp, arch.down) == ("blocks", "attention", "feed_forward", "feed_forward.w2")
    with pytest.raises(UserInputError, match="unsupported architecture Linear"):
        architecture(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("family", FAMILIES)
def test_logit_lens_at_the_last_layer_is_the_models_own_logits(models, family):
    from unlearn_audit.subject.sites import unembed

    model, ids = models[family], _ids()
    last = Site("resid_post", num_layers(model) - 1)
    with torch.no_grad():
        logits = model(ids).logits
        h = record(model, [last], lambda: model(ids))[last]
        torch.testing.assert_close(unembed(model, h), logits, rtol=1e-5, atol=1e-5)


def test_run_until_stops_the_forward_and_keeps_gradients(models):
    from unlearn_audit.subject.sites import run_until

    model, ids = models["llama"], _ids()
    seen = []
    handle = model.model.layers[1].register_forward_pre_hook(lambda m, a: seen.append(1))
    try:
        h = run_until(model, Site("resid_post", 0), lambda: model(ids))
    finally:
        handle.remove()
    assert seen == [] and h.shape == (2, 9, 32) and h.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(h, record(model, [Site("resid_post", 0)], lambda: model(ids))[Site("resid_post", 0)])
    h.sum().backward()
    assert model.model.layers[0].mlp.down_proj.weight.grad is not None
    model.zero_grad(set_to_none=True)
    assert _no_hooks(model)
