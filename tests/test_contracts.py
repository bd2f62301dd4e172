"""Contracts every registered method and every registered attack keeps, whatever it does.

Parametrised over the registries (``method_names()``, ``attack_names()``), so a new method or
attack is checked here without a line added:

- methods: the input subject is untouched (weights, buffers, info, hooks), provenance is
  written (``info["method"]``: name and the validated params), two runs with one seed give
  bit-identical weights and logits, a guardrail leaves the weights as they were, and no hook
  is left behind beyond the output's own interventions;
- attacks: the original, every unlearned model and the oracle are untouched (weights hashed,
  hooks counted, train/eval mode), two runs give identical JSON, shared references give the
  same result as computing them in the run, and each result validates against
  :class:`unlearn_audit.results.schema.AttackResult` with its declared headline present.

Every method and attack runs with the cheapest settings its Params allow (a few steps, one
bit width, two checkpoints...): these tests check contracts, not how well anything works.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math

import pytest
import torch

from unlearn_audit.api import unlearn
from unlearn_audit.attacks import attack_names, get_attack
from unlearn_audit.data.encode import encode_qa
from unlearn_audit.methods import get_method, method_names
from unlearn_audit.results.schema import AttackResult

# -------------------------------------------------------------------------- helpers


def weights_hash(model) -> str:
    """sha256 over every state_dict entry (name, dtype, shape, bytes), in state_dict order."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def hook_counts(model) -> dict[str, tuple[int, int, int]]:
    """Per module with any hook: (forward hooks, forward pre-hooks, backward hooks)."""
    out = {}
    for name, m in model.named_modules():
        n = (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        if any(n):
            out[name] = n
    return out


def fingerprint(subject) -> dict:
    """Everything a method or an attack must leave as it found it."""
    return {"weights": weights_hash(subject.model), "hooks": hook_counts(subject.model),
            "training": [m.training for m in subject.model.modules()],
            "requires_grad": [p.requires_grad for p in subject.model.parameters()],
            "info": copy.deepcopy(subject.info), "prompt_template": subject.prompt_template,
            "interventions": len(subject.interventions)}


@torch.no_grad()
def logits_of(subject, target) -> torch.Tensor:
    """The subject's logits (its prompt template and interventions applied) on a few forget
    questions."""
    enc = encode_qa(subject.tokenizer, target.all_forget_qa[:4], subject.prompt_template, subject.answer_eos)
    was = subject.model.training
    subject.model.eval()
    try:
        return subject.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.clone()
    finally:
        subject.model.train(was)


# -------------------------------------------------------------------------- methods

# the cheapest value of each knob, set only where the method's Params has the field
CHEAP_METHOD = {"steps": 2, "batch_size": 4, "reinforce_steps": 2, "v_steps": 2, "search_steps": 2,
                "on": "qa", "shards": 2}  # control_vector: means over QA prompts only (texts take 4x longer)


def cheap_method_params(m) -> dict:
    return {k: v for k, v in CHEAP_METHOD.items() if k in m.Params.model_fields}


@pytest.fixture
def organism_cache(cache_dir, monkeypatch):
    """``retrain`` loads the oracle from the organism cache: point it at the test cache."""
    monkeypatch.setenv("UNLEARN_AUDIT_CACHE", str(cache_dir))


@pytest.mark.parametrize("name", method_names())
def test_method_contract(name, micro, micro_target, organism_cache):
    full = micro[0]
    m = get_method(name)
    params = m.params(cheap_method_params(m))
    before = fingerprint(full)

    a = m.run(full, micro_target, params)
    after_first = fingerprint(full)
    b = m.run(full, micro_target, params)

    # the input subject is untouched: weights, buffers, mode, info, template, hooks
    assert after_first == before, f"{name} changed its input subject"
    assert fingerprint(full) == before, f"{name} changed its input subject on a second run"
    assert a.model is not full.model and b.model is not a.model, f"{name} returned its input model"

    # provenance: the method's name and exactly the validated params
    for out in (a, b):
        assert out.info["method"]["name"] == name
        assert out.info["method"]["params"] == params.model_dump()

    # deterministic: one seed, bit-identical weights, template, interventions and logits
    assert weights_hash(a.model) == weights_hash(b.model), (
        f"{name}: two runs differ (nondeterministic, or references change the result)")
    assert a.prompt_template == b.prompt_template
    assert [iv.config() for iv in a.interventions] == [iv.config() for iv in b.interventions]
    for x, y in zip(a.interventions, b.interventions, strict=True):
        tx, ty = x.tensors(), y.tensors()
        assert tx.keys() == ty.keys() and all(torch.equal(tx[k], ty[k]) for k in tx)
    assert torch.equal(logits_of(a, micro_target), logits_of(b, micro_target))

    # no hook left behind: the input has none, the output only its interventions', the same
    # number on every run
    assert hook_counts(full.model) == {}
    assert hook_counts(a.model) == hook_counts(b.model)
    assert sum(map(sum, hook_counts(a.model).values())) == len(a._handles)
    if not a.interventions:
        assert hook_counts(a.model) == {}, f"{name} left a hook on its output with no intervention"

    if m.kind == "guardrail":
        # weights unchanged (the guardrail wraps inference), but inference does change
        assert weights_hash(a.model) == before["weights"]
        assert not torch.equal(logits_of(a, micro_target), logits_of(full, micro_target))


# -------------------------------------------------------------------------- attacks

# answer_prob: teacher-forced, no greedy generation (exact_match generates at every checkpoint,
# 8x slower here); the training, curve and recovery code is the same for every metric
RELEARNING = {"checkpoints": [0, 2], "bootstrap": 0, "reemergence": False, "batch_size": 4, "metric": "answer_prob"}
CHEAP_ATTACK = {
    "rtt": RELEARNING, "forget_data": RELEARNING, "unrelated": RELEARNING,
    "patching": {"max_questions": 2, "max_new_tokens": 8, "max_rows": 16},
    "concept_vectors": {"n_vectors": 8, "top_k": 4},
    "in_context": {"shots": [0, 1], "draws": 1, "variants": ["heldout"]},
    "quantize": {"bits": [8]},
    "weight_distance": {"alphas": [0.0, 1.0]},
}


def cheap_attack_params(spec):
    fields = spec.Params.model_fields
    return spec.params({k: v for k, v in CHEAP_ATTACK.get(spec.name, {}).items() if k in fields})


@pytest.fixture(scope="module")
def unlearned_pair(micro, micro_target):
    """Two cheap unlearned models, so the attacks' per-model loop runs twice: one unchanged,
    one moved a little."""
    full = micro[0]
    return {"none": unlearn(full, micro_target, "none"),
            "ga": unlearn(full, micro_target, "gradient_ascent", steps=3, lr=3e-4)}


def _number_or_none(v) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v))


@pytest.mark.parametrize("name", attack_names())
def test_attack_contract(name, micro, micro_target, unlearned_pair):
    full, oracle = micro
    spec = get_attack(name)
    params = cheap_attack_params(spec)
    subjects = {"original": full, "oracle": oracle, **unlearned_pair}
    before = {k: fingerprint(s) for k, s in subjects.items()}

    first = spec.run(full, dict(unlearned_pair), oracle, micro_target, params)
    assert {k: fingerprint(s) for k, s in subjects.items()} == before, f"{name} changed a subject"
    # the second run takes the shared references (what an experiment computes once per target)
    # when the attack has them: equal results then mean deterministic *and* references that
    # change nothing
    refs = {}
    if spec.references is not None:
        refs = {"references": spec.references(full, oracle, micro_target, params)}
        json.dumps(refs, allow_nan=False)
        assert {k: fingerprint(s) for k, s in subjects.items()} == before, f"{name} references changed a subject"
    second = spec.run(full, dict(unlearned_pair), oracle, micro_target, params, **refs)
    assert {k: fingerprint(s) for k, s in subjects.items()} == before, f"{name} changed a subject"

    # JSON (no NaN or inf), deterministic
    text = json.dumps(first, sort_keys=True, allow_nan=False)
    assert json.dumps(second, sort_keys=True, allow_nan=False) == text, (
        f"{name}: two runs differ (nondeterministic, or references change the result)")

    # one result per unlearned model, each valid against the schema and carrying its headline
    assert set(first["methods"]) == set(unlearned_pair)
    decl = spec.declaration
    for model, r in first["methods"].items():
        assert "recovery" in r and "residual" in r, (name, model)
        assert _number_or_none(r["recovery"]) and _number_or_none(r["residual"]), (name, model, r)
        AttackResult.model_validate(r)
        assert decl.headline in r or (decl.fallback is not None and decl.fallback in r), (name, model, decl)
        # with an oracle given, an oracle-relative headline is a number for a model that moved
        if model == "ga" and decl.headline == "residual":
            assert r["residual"] is not None, (name, r)


def test_the_fingerprint_sees_a_changed_weight_a_hook_and_a_mode():
    """The contracts above are only as good as the fingerprint: it must notice one float."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    h = weights_hash(model)
    with torch.no_grad():
        model[1].weight[0, 0] += 1e-6
    assert weights_hash(model) != h
    assert hook_counts(model) == {}
    handle = model[0].register_forward_pre_hook(lambda m, a: None)
    assert hook_counts(model) == {"0": (0, 1, 0)}
    handle.remove()
    assert hook_counts(model) == {}
