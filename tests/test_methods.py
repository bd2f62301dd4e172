import math

import pytest
import torch

from unlearn_audit.api import unlearn
from unlearn_audit.errors import TrainingDiverged, UserInputError
from unlearn_audit.methods import get_method, method_names
from unlearn_audit.methods.base import npo_loss, retain_kl
from unlearn_audit.metrics import EvalSuite

FINETUNE = ["gradient_ascent", "gradient_difference", "kl", "npo", "npo_gd", "npo_kl"]
UNREGULARISED = {"gradient_difference": "gradient_ascent", "kl": "gradient_ascent",
                 "npo_gd": "npo", "npo_kl": "npo"}


@pytest.fixture(scope="module")
def nll_of(micro, micro_target):
    suite = EvalSuite(micro[0], {k: v for k, v in micro_target.eval_sets().items() if k in ("forget", "retain")})
    return lambda s: {k: v.mean_nll for k, v in suite.run(s.model).items()}


@pytest.fixture(scope="module")
def unlearned_30(micro, micro_target):
    """Every fine-tuning method, 30 steps at lr 1e-4 on forget QA (retain weight 5 where there is one)."""
    out = {}
    for name in FINETUNE:
        extra = {"retain_weight": 5.0} if name in UNREGULARISED else {}
        out[name] = unlearn(micro[0], micro_target, name, steps=30, lr=1e-4, forget_on="qa", **extra)
    return out


def test_registry_has_the_methods():
    assert set(FINETUNE + ["none"]) <= set(method_names())
    with pytest.raises(UserInputError, match="unknown method 'nope'; choose one of"):
        get_method("nope")


@pytest.mark.parametrize("name", FINETUNE)
def test_method_raises_forget_nll(name, micro, unlearned_30, nll_of):
    before, after = nll_of(micro[0]), nll_of(unlearned_30[name])
    assert after["forget"] > 3 * before["forget"], (before, after)


@pytest.mark.parametrize("name", list(UNREGULARISED))
def test_retain_term_limits_retain_damage(name, micro, unlearned_30, nll_of):
    before = nll_of(micro[0])["retain"]
    with_retain = nll_of(unlearned_30[name])["retain"] - before
    without = nll_of(unlearned_30[UNREGULARISED[name]])["retain"] - before
    assert with_retain < 0.9 * without, (with_retain, without)


def test_unlearn_never_mutates_its_input(micro, micro_target):
    before = {k: v.clone() for k, v in micro[0].model.state_dict().items()}
    u = unlearn(micro[0], micro_target, "npo_kl", steps=3)
    for k, v in micro[0].model.state_dict().items():
        assert torch.equal(v, before[k])
    assert u.model is not micro[0].model
    assert u.info["method"]["name"] == "npo_kl" and u.info["method"]["params"]["steps"] == 3


def test_none_is_an_identical_copy(micro, micro_target):
    u = unlearn(micro[0], micro_target, "none")
    assert u.model is not micro[0].model
    for a, b in zip(u.model.parameters(), micro[0].model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_npo_loss_matches_hand_computation():
    logp, ref, beta = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0]), 0.5
    # -beta * (logp - ref) = [-0.25, 0.5]; log sigmoid(x) = -log(1 + e^-x)
    expected = -(2 / beta) * (-(math.log1p(math.exp(0.25)) + math.log1p(math.exp(-0.5))) / 2)
    assert math.isclose(float(npo_loss(logp, ref, beta)), expected, rel_tol=1e-6)
    # dL/dlogp = 2 sigmoid(beta (logp - ref)): 1 at logp == ref, i.e. the gradient-ascent
    # direction on the sequence log-prob (Zhang et al. 2024, eq. 3), shrinking as logp falls
    x = torch.tensor([-3.0, -9.0], requires_grad=True)
    npo_loss(x, torch.tensor([-3.0, -3.0]), 1.0).backward()
    assert x.grad.tolist() == pytest.approx([2 * 0.5 / 2, 2 / (1 + math.exp(6)) / 2], rel=1e-5)


def test_retain_kl_is_zero_against_itself_and_matches_by_hand(micro, micro_target):
    from unlearn_audit.data.encode import encode_qa

    model = micro[0].model
    batch = encode_qa(micro[0].tokenizer, micro_target.retain_qa[:4], micro[0].prompt_template, True)
    with torch.no_grad():
        assert float(retain_kl(model, model, batch)) == pytest.approx(0.0, abs=1e-6)
        other = micro[1].model
        got = float(retain_kl(model, other, batch, "answer"))
        mask = batch["labels"][:, 1:] != -100
        p_ref = torch.log_softmax(other(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][mask], -1)
        p = torch.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][mask], -1)
        by_hand = float((p_ref.exp() * (p_ref - p)).sum(-1).mean())
    assert got == pytest.approx(by_hand, rel=1e-4) and got > 0


def test_params_validation():
    m = get_method("npo")
    assert m.params({"beta": "3", "steps": "10"}).beta == 3.0
    with pytest.raises(UserInputError, match="has no parameter 'bta'; its parameters: .*beta"):
        m.params({"bta": 1})
    with pytest.raises(UserInputError, match="parameter 'beta'"):
        m.params({"beta": -1})
    with pytest.raises(UserInputError, match="forget_on"):
        m.params({"forget_on": "everything"})


def test_divergence_is_a_clear_error(micro, micro_target):
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        unlearn(micro[0], micro_target, "gradient_ascent", lr=1e3, max_grad_norm=None, steps=20)


def _rows(data) -> set[tuple[int, ...]]:
    """Each encoded row's unpadded token ids."""
    return {tuple(ids[mask.bool()].tolist()) for ids, mask in zip(data["input_ids"], data["attention_mask"], strict=True)}


def test_forget_on_chooses_what_is_trained_on(micro, micro_target, nll_of, monkeypatch):
    """The forget batches the training loop actually receives are rows of the QA encoding, of
    the texts', or of both, as ``forget_on`` says (recorded by a spy on ``train``); training on
    texts moves the weights elsewhere than training on QA, and still raises the forget NLL."""
    import unlearn_audit.methods.base as base
    from unlearn_audit.data.encode import encode_qa, encode_texts

    full = micro[0]
    qa = _rows(encode_qa(full.tokenizer, micro_target.all_forget_qa, full.prompt_template, full.answer_eos))
    text = _rows(encode_texts(full.tokenizer, micro_target.forget_text))
    assert qa and text and not qa & text
    seen: list[set] = []
    real_train = base.train

    def spy(model, loss, batches, config, **kw):
        def recorded():
            for b in batches:
                seen.append(_rows(b["forget"]))
                yield b
        return real_train(model, loss, recorded(), config, **kw)

    monkeypatch.setattr(base, "train", spy)
    before = nll_of(full)["forget"]
    weights = {}
    for mode, expected in (("qa", qa), ("text", text), ("both", qa | text)):
        seen.clear()
        u = unlearn(full, micro_target, "gradient_ascent", steps=15, forget_on=mode)
        trained_on = set().union(*seen)
        assert len(seen) >= 15 and trained_on <= expected, mode
        if mode == "both":
            assert trained_on & qa and trained_on & text
        weights[mode] = torch.cat([p.flatten() for p in u.model.parameters()])
        if mode != "qa":
            assert nll_of(u)["forget"] > before, mode
    assert not torch.equal(weights["qa"], weights["text"])
    assert not torch.equal(weights["both"], weights["qa"]) and not torch.equal(weights["both"], weights["text"])


def test_same_seed_same_unlearned_weights(micro, micro_target):
    a = unlearn(micro[0], micro_target, "npo_gd", steps=5)
    b = unlearn(micro[0], micro_target, "npo_gd", steps=5)
    c = unlearn(micro[0], micro_target, "npo_gd", steps=5, seed=1)
    pa, pb, pc = (torch.cat([p.flatten() for p in s.model.parameters()]) for s in (a, b, c))
    assert torch.equal(pa, pb)
    assert not torch.equal(pa, pc)
