"""The one registry: duplicates and foreign classes are rejected; a third-party method is found
through an entry point, with no edit to this package."""

from __future__ import annotations

import sys
import textwrap

import pytest

from unlearn_audit.errors import UserInputError
from unlearn_audit.methods import REGISTRY, Method, MethodParams, get_method
from unlearn_audit.registry import Registry


def _registry() -> Registry:
    return Registry("method", Method, "unlearn_audit.methods", "unlearn_audit.test-none")


def test_a_second_class_under_one_name_is_rejected():
    reg = _registry()

    class A(Method):
        pass

    class B(Method):
        pass

    reg.register("x", A)
    reg.register("x", A)  # the same class again (a module imported twice) is fine
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("x", B)
    assert reg["x"] is A


def test_an_entry_that_is_not_a_method_is_rejected():
    with pytest.raises(TypeError, match="not a subclass of Method"):
        _registry().register("y", dict)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UserInputError, match="unknown method 'nope'.*gradient_ascent"):
        get_method("nope")


def test_a_method_from_an_entry_point(tmp_path, monkeypatch):
    (tmp_path / "throwaway_unlearn_method.py").write_text(textwrap.dedent('''
        from unlearn_audit.methods import Method, MethodParams, register_method

        @register_method("throwaway")
        class Throwaway(Method):
            kind = "baseline"
            Params = MethodParams
    '''))
    dist = tmp_path / "throwaway_unlearn-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: throwaway-unlearn\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[unlearn_audit.methods]\nthrowaway = throwaway_unlearn_method\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "throwaway" not in REGISTRY
        REGISTRY.load(refresh=True)
        method = get_method("throwaway")
        assert type(method).__module__ == "throwaway_unlearn_method"
        assert isinstance(method.params({}), MethodParams)
    finally:
        REGISTRY.pop("throwaway", None)
        sys.modules.pop("throwaway_unlearn_method", None)
