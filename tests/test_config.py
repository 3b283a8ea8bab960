"""Configs: spec parsing, two-stage validation and one-line errors."""

from __future__ import annotations

import math
import re

import numpy as np
import pydantic
import pytest

import mechscope
from mechscope.config import (
    ComponentSpec,
    config_to_json_dict,
    validate_config,
    validate_list,
    validate_seed,
)
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


class NumbersConfig(mechscope.Config):
    """Every kind of field the strict rules treat differently."""

    rate: float = 0.1
    count: int = 2
    flag: bool = False
    window: tuple[float, float] = (0.0, 1.0)
    label: str = "a"
    either: int | str = 1
    threshold: float = pydantic.Field(1.0, allow_inf_nan=True)  # an explicit opt-out


def check(params):
    return validate_config(NumbersConfig, params, where="probe 'n'")


def test_validation_keeps_json_compatible_forms():
    config = check({"rate": 1, "window": [0.5, 2], "either": "x", "flag": True})
    assert config.rate == 1.0 and isinstance(config.rate, float)
    assert config.window == (0.5, 2.0)
    assert config.either == "x"
    assert check({"either": 3}).either == 3
    # NumPy scalars (what Python users pass from arrays) are numbers.
    assert check({"rate": np.float32(0.5), "count": np.int64(4)}) == check(
        {"rate": 0.5, "count": 4}
    )


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"rate": "0.01"}, "field 'rate' = '0.01': Input should be a valid number"),
        ({"count": "2"}, "field 'count' = '2'"),
        ({"count": 2.5}, "field 'count' = 2.5"),
        ({"flag": "true"}, "field 'flag' = 'true'"),
        ({"flag": 1}, "field 'flag' = 1"),
        ({"label": 3}, "field 'label' = 3"),
        ({"window": "0.5"}, "field 'window' = '0.5': expected a list of values"),
        ({"rate": float("inf")}, "field 'rate' = inf: Input should be a finite number"),
        ({"rate": float("nan")}, "field 'rate' = nan"),
        ({"window": [0.0, float("-inf")]}, "field 'window.1' = -inf"),
        ({"rate": object()}, "field 'rate' = <object"),
        ({"window": [0.0, {1, 2}]}, "field 'window.1' = {1, 2}: expected a number"),
    ],
)
def test_validation_is_strict_and_finite(params, fragment):
    with pytest.raises(ConfigError) as caught:
        check(params)
    message = str(caught.value)
    assert message.startswith("probe 'n': ") and fragment in message, message
    assert "\n" not in message


def test_non_finite_numbers_are_rejected_however_a_config_is_built():
    with pytest.raises(pydantic.ValidationError, match="finite number"):
        NumbersConfig(rate=float("inf"))
    # ...except where a field opts out.
    assert math.isinf(check({"threshold": float("inf")}).threshold)
    assert math.isinf(NumbersConfig(threshold=float("-inf")).threshold)


def test_every_registered_config_validates_its_defaults_strictly():
    registry = mechscope.get_registry()
    for entry in registry.entries():
        default = entry.config_class()
        assert entry.validate(config_to_json_dict(default)) == default, entry.name


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (2.5, "seed must be an integer, got 2.5"),
        (True, "seed must be an integer, got True"),
        ("1", "seed must be an integer"),
        (-1, "between 0 and 2**32 - 1, got -1"),
        (2**32, "between 0 and 2**32 - 1"),
    ],
)
def test_seeds_are_integers_jax_keys_keep_apart(value, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        validate_seed(value)
    assert validate_seed(0) == 0 and validate_seed(2**32 - 1) == 2**32 - 1


def test_lists_are_lists():
    assert validate_list(("a",), where="probes", example="[]") == ["a"]
    for bad in ("jpca", {"name": "jpca"}, 3):
        with pytest.raises(ConfigError, match="probes = .*: expected a list of values, e.g. "):
            validate_list(bad, where="probes", example='["jpca"]')
