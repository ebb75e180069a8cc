"""LinearizerModel checks its config values' types and ranges when it is built — from code, from a dict and from
a saved ``config.json`` — naming the key, the value and what was expected, before any layer is made."""

import json
import math

import pytest

from diffusers_linearizer import LinearizerModel
from diffusers_linearizer.models.config_checks import CONFIG_RULES

from .utils import tiny_model

BAD = [
    ("sample_size", "big", "an integer ≥ 1"),
    ("sample_size", 0, "an integer ≥ 1"),
    ("in_channels", 3.5, "an integer ≥ 1"),
    ("in_channels", True, "an integer ≥ 1"),
    ("num_blocks", -1, "an integer ≥ 1"),
    ("conditioner_channels", "64", "an integer ≥ 1"),
    ("conditioner_layers", 0, "an integer ≥ 1"),
    ("clamp_value", -2.0, "a finite number > 0"),
    ("clamp_value", math.inf, "a finite number > 0"),
    ("core_rank", 2.0, "an integer ≥ 0"),
    ("core_identity", "yes", "true or false"),
    ("shared_g", 1, "true or false"),
    ("role_x", math.nan, "a finite number"),
    ("role_y", "0", "a finite number"),
    ("num_classes", -3, "an integer ≥ 0"),
    ("sampling_temperature", 0, "a finite number > 0"),
    ("sampling_temperature", math.nan, "a finite number > 0"),
    ("core_type", 3, "a non-empty string"),
    ("conditioning", "", "null or a non-empty string"),
    ("id2label", ["a", "b"], "null or an object mapping class ids to names"),
]


@pytest.mark.parametrize("key, value, expected", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_a_wrong_value_is_named_with_its_key(key, value, expected):
    with pytest.raises(ValueError) as info:
        tiny_model(**{key: value})
    assert f"{key} = {value!r} (expected {expected})" in str(info.value)


def test_every_init_argument_has_a_rule():
    import inspect

    params = set(inspect.signature(LinearizerModel.__init__).parameters) - {"self"}
    assert params == set(CONFIG_RULES)


def test_several_wrong_values_are_all_named():
    with pytest.raises(ValueError) as info:
        tiny_model(sample_size="big", num_blocks=0)
    assert "sample_size = 'big'" in str(info.value) and "num_blocks = 0" in str(info.value)


@pytest.mark.parametrize("key, value", [("sample_size", "big"), ("in_channels", 3.5), ("core_identity", None)])
def test_a_hand_edited_config_json_is_named(tmp_path, key, value):
    tiny_model().save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    config[key] = value
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"{key} = {value!r}"):
        LinearizerModel.from_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=f"{key} = {value!r}"):
        LinearizerModel.from_config(config)
