"""The one registry class (ablate.registry) and what lives on it: model families and CLI subcommands."""

from __future__ import annotations

import pytest

from ablate.config import MODEL_CONFIGS, ConfigError, build_config
from ablate.models.registry import FAMILIES
from ablate.registry import Registry, UnknownName


class Base:
    pass


class Thing(Base):
    pass


def test_registry_rules():
    things: Registry[type] = Registry("thing", base=Base)
    things.register("a", Thing)

    @things.register("b")
    class Other(Base):
        pass

    assert things.names() == ["a", "b"] and things.get("b") is Other
    with pytest.raises(ValueError, match="thing 'a' registered twice"):
        things.register("a", Other)
    with pytest.raises(TypeError, match="must be a Base"):
        things.register("c", int)
    with pytest.raises(UnknownName) as info:
        things.get("aa")
    assert str(info.value) == "unknown thing 'aa'; did you mean 'a'?"
    assert str(pytest.raises(UnknownName, things.get, "zzz").value) == "unknown thing 'zzz'; known: a, b"


def test_a_registry_is_frozen_after_discovery():
    assert "lstm" in FAMILIES  # discovery ran
    with pytest.raises(RuntimeError, match="frozen"):
        FAMILIES.register("late", FAMILIES.get("lstm"))


def test_every_model_config_has_its_family_and_back():
    assert sorted(FAMILIES.names()) == sorted(MODEL_CONFIGS)
    for name, family in FAMILIES.all().items():
        assert family.name == name


def test_an_unknown_family_is_an_error_with_a_suggestion_never_a_fallback():
    with pytest.raises(ConfigError) as info:
        build_config({"model": {"name": "lsmt"}}, "x.yaml")
    assert str(info.value) == ("x.yaml: model: no model family 'lsmt'; did you mean 'lstm'?; model.name is one of "
                               "lstm, seq2seq")
    with pytest.raises(UnknownName, match="unknown model family 'transformer'"):
        FAMILIES.get("transformer")


def test_subcommands_come_from_the_registry():
    from ablate.cli import build_parser
    from ablate.commands import COMMANDS

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"run", "validate", "techniques", "sweep", "worker", "status", "report", "sample"} <= set(sub.choices)
    assert set(COMMANDS.names()) == {"sweep", "report", "results", "sample", "export"}
