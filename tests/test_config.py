"""Configs: spec parsing, two-stage validation and one-line errors."""

from __future__ import annotations

import pydantic
import pytest

import mechscope
from mechscope.config import ComponentSpec, validate_config
from mechscope.errors import ConfigError


class ExampleConfig(mechscope.Config):
    """An example."""

    activation: str = "tanh"
    n_units: int = pydantic.Field(100, ge=1)
    gains: tuple[float, ...] = (1.0, 2.0)


def test_spec_forms_agree():
    bare = ComponentSpec.parse("model", "ctrnn")
    table = ComponentSpec.parse("model", {"name": "ctrnn", "n_units": 5})
    assert bare == ComponentSpec(kind="model", name="ctrnn", params={})
    assert table.name == "ctrnn" and table.params == {"n_units": 5}
    assert ComponentSpec.parse("model", table) is table
    assert table.to_dict() == {"name": "ctrnn", "n_units": 5}


@pytest.mark.parametrize(
    ("kind", "value", "fragment"),
    [
        ("modle", "ctrnn", "did you mean 'model'"),
        ("model", {"n_units": 3}, "missing 'name'"),
        ("model", 3, "expected a name or a table"),
        ("model", {"name": 7}, "'name' must be a string"),
    ],
)
def test_bad_specs_fail_with_one_line(kind, value, fragment):
    with pytest.raises(ConfigError) as caught:
        ComponentSpec.parse(kind, value)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_spec_of_wrong_kind_is_rejected():
    spec = ComponentSpec.parse("task", "delayed_reach")
    with pytest.raises(ConfigError, match="expected a model but got a task"):
        ComponentSpec.parse("model", spec)


def test_unknown_field_names_field_and_suggests():
    with pytest.raises(ConfigError) as caught:
        validate_config(ExampleConfig, {"activaton": "relu"}, where="model 'x'")
    message = str(caught.value)
    assert message.startswith("model 'x': unknown field 'activaton'")
    assert "did you mean 'activation'" in message
    assert "\n" not in message


def test_bad_value_names_field_value_and_expectation():
    with pytest.raises(ConfigError) as caught:
        validate_config(ExampleConfig, {"n_units": 0}, where="model 'x'")
    message = str(caught.value)
    assert "field 'n_units' = 0" in message
    assert "greater than or equal to 1" in message


def test_configs_are_frozen_hashable_and_roundtrip():
    config = ExampleConfig(gains=[3.0, 4.0])
    assert config.gains == (3.0, 4.0)
    assert hash(config) == hash(ExampleConfig(gains=(3.0, 4.0)))
    with pytest.raises(pydantic.ValidationError):
        config.n_units = 3
    assert ExampleConfig.model_validate_json(config.model_dump_json()) == config
    from mechscope.testing import check_config_roundtrip

    check_config_roundtrip(config)
