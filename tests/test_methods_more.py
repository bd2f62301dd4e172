"""Preference methods, guardrails and retrain."""

import math

import pytest
import torch

from unlearn_audit.api import unlearn
from unlearn_audit.errors import UserInputError
from unlearn_audit.methods.dpo import dpo_loss
from unlearn_audit.methods.simnpo import simnpo_loss
from unlearn_audit.metrics import EvalSuite
from unlearn_audit.organisms import load_subject


def test_dpo_and_simnpo_losses_by_hand():
    # DPO: -log sigmoid(beta * (w - l)), w = 0.5, l = -1.0, beta = 0.4 -> -log sigmoid(0.6)
    got = dpo_loss(torch.tensor([0.5]), torch.tensor([-1.0]), 0.4, scale="1")
    assert float(got) == pytest.approx(math.log1p(math.exp(-0.6)))
    # default (open-unlearning): the same times 2/beta = 5
    got = dpo_loss(torch.tensor([0.5]), torch.tensor([-1.0]), 0.4)
    assert float(got) == pytest.approx(5 * math.log1p(math.exp(-0.6)))
    # SimNPO: -(2/beta) log sigmoid(-beta * (m + delta)), m = -2, beta = 1, delta = 0.5 -> 2 log(1 + e^-1.5)
    got = simnpo_loss(torch.tensor([-2.0]), 1.0, 0.5)
    assert float(got) == pytest.approx(2 * math.log1p(math.exp(-1.5)))


def _weights(s):
    return torch.cat([p.detach().flatten() for p in s.model.parameters()])


def test_simnpo_lowers_forget_accuracy(micro, micro_target):
    suite = EvalSuite(micro[0], {"forget": micro_target.all_forget_qa})
    u = unlearn(micro[0], micro_target, "simnpo", steps=20)
    assert suite.accuracies(u)["forget"] < suite.accuracies(micro[0])["forget"] - 0.3


def test_dpo_prefers_the_refusal(micro, micro_target):
    from unlearn_audit.methods.dpo import DPO, preference_data
    from unlearn_audit.metrics.likelihood import sequence_logprob

    m = DPO()
    params = m.params({"lr": 1e-3, "steps": 20})
    data = preference_data(micro[0], micro_target, params)
    u = unlearn(micro[0], micro_target, "dpo", lr=1e-3, steps=20)
    with torch.no_grad():
        margin_before = (data["chosen"]["ref_logprob"] - data["ref_logprob"]).mean()
        margin_after = (sequence_logprob(u.model, data["chosen"]) - sequence_logprob(u.model, data)).mean()
    assert margin_after > margin_before + 5


def test_guardrails_leave_weights_bit_identical(micro, micro_target):
    for name in ("prompt_guardrail", "eco"):
        u = unlearn(micro[0], micro_target, name)
        assert torch.equal(_weights(u), _weights(micro[0])), name


def test_prompt_guardrail_changes_the_prompt_only(micro, micro_target):
    u = unlearn(micro[0], micro_target, "prompt_guardrail")
    assert micro_target.name in u.prompt_template and u.prompt_template.endswith(micro[0].prompt_template)
    assert u.prompt_template.format(question="Q?").startswith("You know nothing")


def test_eco_guards_forget_and_survives_copy_and_save(micro, micro_target, tmp_path):
    u = unlearn(micro[0], micro_target, "eco")
    suite = EvalSuite(micro[0], {"forget": micro_target.all_forget_qa, "retain": micro_target.retain_qa})
    acc = suite.accuracies(u)
    assert acc["forget"] <= 0.1 and acc["retain"] >= 0.8
    copy = u.copy()
    assert suite.accuracies(copy) == acc
    assert len(u.model.get_input_embeddings()._forward_hooks) == 1, "copying must not stack hooks"
    u.save(tmp_path / "eco")
    loaded = load_subject(tmp_path / "eco", device="cpu")
    assert suite.accuracies(loaded) == acc
    # without the guard, the same weights still know everything
    assert suite.accuracies(micro[0].model)["forget"] >= 0.9


def test_retrain_is_the_oracle_and_needs_the_organism(micro, micro_target, tiny_model_dirs, tmp_path, monkeypatch,
                                                     cache_dir):
    # the oracle comes from the cache the organism was loaded from, not the default one (which
    # would train it again there)
    from unlearn_audit.organisms import organism

    full, _ = organism("micro", 0, cache_dir=cache_dir)  # loaded from the test cache
    monkeypatch.setenv("UNLEARN_AUDIT_CACHE", str(tmp_path / "default-cache"))
    u = unlearn(full, micro_target, "retrain")
    assert torch.equal(_weights(u), _weights(micro[1]))
    assert not (tmp_path / "default-cache").exists()
    assert u.info["organism"]["kind"] == "oracle" and u.info["method"]["name"] == "retrain"
    from unlearn_audit.data.target import load_target

    other = load_subject(tiny_model_dirs["llama"], device="cpu")
    with pytest.raises(UserInputError, match="retrain needs the built-in organism"):
        unlearn(other, load_target("world:micro/0"), "retrain")


class _FixedLogits(torch.nn.Module):
    """A stand-in model returning the same logits for every input: (1, T, V)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits, requires_grad=False)

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return type("Out", (), {"logits": self.logits.expand(len(input_ids), -1, -1)})


def test_whp_generic_labels_by_hand():
    from unlearn_audit.methods.whp import generic_labels

    base = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 3.0, 2.5], [1.0, 1.0, 1.0]]])     # (1, T=3, V=3)
    rein = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 4.0, 2.5], [1.0, 1.0, 1.0]]])     # boosts token 1 at t=1
    data = {"input_ids": torch.tensor([[0, 1, 2]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
            "labels": torch.tensor([[0, 1, 2]])}
    labels = generic_labels(_FixedLogits(base), _FixedLogits(rein), data, alpha=5.0)
    # t=0 predicts token 1: argmax base [2, 1, 0] = 0 (no boost)
    # t=1 predicts token 2: base [0, 3, 2.5] - 5 * relu([0, 1, 0]) = [0, -2, 2.5] -> 2
    assert labels.tolist() == [[0, 0, 2]]
    assert generic_labels(_FixedLogits(base), _FixedLogits(base), data, 5.0).tolist() == [[0, 0, 1]]


def test_whp_raises_forget_nll(micro, micro_target):
    suite = EvalSuite(micro[0], {"forget": micro_target.all_forget_qa, "completion": micro_target.extra_eval["forget_completion"]})
    u = unlearn(micro[0], micro_target, "whp", steps=30, lr=3e-4, reinforce_steps=10)
    before, after = suite.run(micro[0]), suite.run(u)
    assert after["completion"].mean_nll > before["completion"].mean_nll + 0.2
    assert u.info["method"]["anchored_labels"] > 0


def test_whp_anchor_order_is_longest_first_then_by_name():
    # the order used to follow set iteration (string hashing), so whp's weights changed with
    # PYTHONHASHSEED; ten equal-length names make an accidental match all but impossible
    from types import SimpleNamespace

    from unlearn_audit.methods.whp import anchors_of
    from unlearn_audit.world import QA

    names = [f"Name{c}" for c in "qwertyuiop"] + ["Longer Name"]
    qa = [QA(f"Who is {n}?", "x", "qa", n, "job") for n in names]
    assert anchors_of(SimpleNamespace(all_forget_qa=qa)) == ["Longer Name"] + sorted(names[:-1])
