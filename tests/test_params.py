"""Attack parameters from the command line: scoped keys, renamed relearning parameters."""

from __future__ import annotations

import pytest

from unlearn_audit.attacks import attack_fields, get_attack
from unlearn_audit.errors import UserInputError
from unlearn_audit.params import scope_params


def test_scoped_keys_go_to_one_attack_and_plain_keys_to_every_attack_that_has_them():
    got = scope_params({"checkpoints": [0, 5], "rtt.lr": 1e-3, "seed": 1, "patching.seed": 2},
                       ["rtt", "unrelated", "patching"], attack_fields)
    assert got == {"rtt": {"checkpoints": [0, 5], "seed": 1, "lr": 1e-3},
                   "unrelated": {"checkpoints": [0, 5], "seed": 1},
                   "patching": {"seed": 2}}                       # the scoped value wins


@pytest.mark.parametrize("values, message", [
    ({"mia.k": 0.2}, "'mia' is not one of the attacks run here (rtt, patching)"),
    ({"bits": [4]}, "no attack of rtt, patching has a parameter 'bits'"),
])
def test_a_key_no_attack_takes_is_an_error(values, message):
    with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        scope_params(values, ["rtt", "patching"], attack_fields)


def test_relearning_takes_its_old_parameter_names_with_a_warning(capsys, monkeypatch):
    import unlearn_audit.params

    monkeypatch.setattr(unlearn_audit.params, "_warned", set())  # warned once per process
    rtt = get_attack("rtt")
    old = rtt.params({"steps": [0, 3], "seeds": 2})
    assert (old.checkpoints, old.runs) == ([0, 3], 2)
    assert old == rtt.params({"checkpoints": [0, 3], "runs": 2})
    assert "'steps' is now called 'checkpoints'" in capsys.readouterr().err
    with pytest.raises(UserInputError, match="give 'checkpoints' only"):
        rtt.params({"steps": [0, 3], "checkpoints": [0, 5]})
    # the old name is accepted on the command line too (it is one of the attack's fields)
    assert scope_params({"steps": [0, 1]}, ["rtt", "probe"], attack_fields) == {"rtt": {"steps": [0, 1]}, "probe": {}}


def test_validated_params_are_carried_as_objects_not_validated_again(monkeypatch, micro, micro_target):
    # a cell's method parameters are validated once, in the config; the method gets that object
    from unlearn_audit.api import unlearn
    from unlearn_audit.experiment.config import expand, parse_experiment
    from unlearn_audit.methods import get_method
    from unlearn_audit.params import validate_params

    m = get_method("gradient_ascent")
    p = m.params({"steps": 1})
    assert validate_params(type(p), p, "x") is p
    cell = expand(parse_experiment({"subject": {"organism": "micro"}, "target": "world:0",
                                    "methods": {"gradient_ascent": {"steps": 1}}, "attacks": ["logit_lens"]}))[0]
    assert cell.method_params.model_dump() == cell.params and cell.method_params.steps == 1
    calls = []
    monkeypatch.setattr(type(p), "__init__", lambda self, **kw: calls.append(kw))  # any new validation
    u = unlearn(micro[0], micro_target, "gradient_ascent", cell.method_params)
    assert calls == [] and u.info["method"]["params"] == cell.params
    with pytest.raises(UserInputError, match="not both"):
        unlearn(micro[0], micro_target, "gradient_ascent", p, steps=2)
