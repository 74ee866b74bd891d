"""Config loading: the default YAML is EnvConfig(), and every mistake gives a ConfigError that teaches."""

from __future__ import annotations

import copy
import re

import gymnasium as gym
import pytest
import yaml
from conftest import DEFAULT, ENV_ID, TINY, config_id, env_config_paths

from greengossip.envs.config import ConfigError, EnvConfig, load_config

TINY_DICT = yaml.safe_load(TINY.read_text())


def _tiny(**changes) -> dict:
    data = copy.deepcopy(TINY_DICT)
    data.update(changes)
    return data


def test_default_yaml_is_the_default_config():
    assert load_config(DEFAULT) == EnvConfig()
    assert load_config(str(DEFAULT)) == EnvConfig()
    assert load_config(None) == EnvConfig()


@pytest.mark.parametrize("path", env_config_paths(), ids=config_id)
def test_every_shipped_config_loads_and_round_trips(path):
    config = load_config(path)
    assert load_config(config.model_dump()) == config
    assert load_config(config) is config


def test_config_is_frozen():
    config = EnvConfig()
    with pytest.raises(Exception, match="frozen"):
        config.n_nodes = 3


@pytest.mark.parametrize(
    ("data", "patterns"),
    [
        (_tiny(n_node=8), [r"n_node\b", "unknown key", "spelling"]),
        (_tiny(learning={"learning_rat": 0.5}), [r"learning\.learning_rat", "unknown key"]),
        (_tiny(n_nodes=-3), [r"n_nodes = -3", "greater than or equal to 2"]),
        (_tiny(fleet=[{"device": "rpi5", "fraction": 1.0, "battery_wh": 10.0, "solar_wp": 5.0}]),
         [r"fleet\.0\.device", "'rpi5'", "allowed", "rpi4", "jetson_nano"]),
        (_tiny(fleet=[{"device": "rpi4", "link": "5g", "fraction": 1.0, "battery_wh": 10.0,
                       "solar_wp": 5.0}]),
         [r"fleet\.0\.link", "'5g'", "lte", "wifi"]),
        (_tiny(regions=[{"name": "X", "country_iso": "XYZ", "latitude": 0, "longitude": 0, "fraction": 1.0}]),
         [r"regions\.0\.country_iso", "'XYZ'", "ISO 3166", "DEU"]),
        (_tiny(fleet=[{"device": "rpi4", "fraction": 0.5, "battery_wh": 10.0, "solar_wp": 5.0},
                      {"device": "smartphone", "fraction": 0.3, "battery_wh": 15.0, "solar_wp": 3.0}]),
         [r"\bfleet\b", "sum to 1", "0.8"]),
        (_tiny(regions=[{"name": "Oslo", "country_iso": "NOR", "latitude": 59.9, "longitude": 10.7,
                         "fraction": 0.6}]),
         [r"\bregions\b", "sum to 1", "0.6"]),
        (_tiny(topology={"kind": "torus"}),
         [r"topology\.kind", "'torus'", "random_geometric", "small_world"]),
        (_tiny(energy={"initial_soc_low": 0.9, "initial_soc_high": 0.2}), ["initial_soc_low", "0.9", "0.2"]),
        (_tiny(device="tpu"), [r"device = 'tpu'", "cpu", "cuda"]),
        (_tiny(regions=[{"name": "X", "country_iso": "USA", "latitude": 37, "longitude": -122, "fraction": 1.0,
                         "grid_zone": "ERCOT"}]),
         [r"regions\.0\.grid_zone", "'ERCOT'", "CAISO", "DE"]),
        (_tiny(grid={"intensity": "hourly"}), [r"grid\.intensity", "'hourly'", "traces", "annual_mean"]),
        (_tiny(grid={"trace_year": 2023}), [r"grid\.trace_year = 2023", "less than or equal to 2020"]),
        (_tiny(availability={"model": "poisson"}), [r"availability\.model", "'poisson'", "always", "markov"]),
    ],
    ids=["misspelt-key", "misspelt-nested-key", "negative-n_nodes", "unknown-device", "unknown-link",
         "unknown-country", "fleet-fractions", "region-fractions", "topology-kind", "soc-range",
         "torch-device", "unknown-grid-zone", "grid-intensity", "trace-year", "availability-model"],
)
def test_bad_value_error_names_field_value_and_what_is_allowed(data, patterns):
    with pytest.raises(ConfigError, match=patterns[0]) as caught:
        load_config(data)
    message = str(caught.value)
    for pattern in patterns[1:]:
        assert re.search(pattern, message), f"{pattern!r} not in:\n{message}"


def test_bad_yaml_file_reports_path_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_tiny(n_nodes=-3)))
    with pytest.raises(ConfigError, match=rf"(?s){path.name}.*n_nodes = -3"):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError, match=r"not found: .*nowhere\.yaml"):
        load_config(missing)


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "[1, 2]\n", "just a string\n", "42\n"],
                         ids=["list", "flow-list", "string", "number"])
def test_non_mapping_yaml_is_a_config_error(tmp_path, text):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path)


def test_invalid_yaml_syntax_is_a_config_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("n_nodes: [8\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_empty_yaml_is_an_error_not_the_default(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="is empty"):
        load_config(path)


def test_env_constructor_raises_config_error():
    with pytest.raises(ConfigError, match="n_nodes"):
        gym.make(ENV_ID, config=_tiny(n_nodes=1))
