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
