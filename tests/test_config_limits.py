"""Configs that cannot run are refused when they are loaded: non-finite or absurd floats, a memory need
beyond the machine's, a round length pandas cannot index by, a device that is not there."""

from __future__ import annotations

import pytest

from greengossip.envs import footprint
from greengossip.envs.config import ConfigError, load_config

TINY = {"n_nodes": 4, "max_rounds": 5}


def _with(path: str, value) -> dict:
    """The tiny config with one (possibly nested) field set: path "reward.carbon"."""
    *sections, field = path.split(".")
    config = dict(TINY)
    node = config
    for section in sections:
        node = node.setdefault(section, {})
    node[field] = value
    return config


FLEET_GROUP = {"device": "rpi4", "fraction": 1.0, "battery_wh": 10.0, "solar_wp": 5.0}


@pytest.mark.parametrize("path", ["reward.accuracy", "reward.carbon", "privacy.epsilon_per_report",
                                  "attack.gaussian_std", "round_minutes", "energy.charge_rate_c",
                                  "learning.dirichlet_alpha", "target_accuracy"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), ".inf"])
def test_non_finite_floats_are_refused_in_every_section(path, value):
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        load_config(_with(path, value))


@pytest.mark.parametrize("field, value", [("battery_wh", 1e308), ("battery_wh", float("inf")),
                                          ("solar_wp", 1e300)])
def test_fleet_group_magnitudes_are_bounded(field, value):
    config = dict(TINY, fleet=[dict(FLEET_GROUP, **{field: value})])
    with pytest.raises(ConfigError, match=rf"fleet\.0\.{field}"):
        load_config(config)


@pytest.mark.parametrize("path, value", [("attack.gaussian_std", 1e30), ("privacy.epsilon_per_report", 1e308),
                                         ("energy.emulated_model_mb", 1e300), ("learning.dirichlet_alpha", 1e200)])
def test_absurd_magnitudes_are_refused(path, value):
    with pytest.raises(ConfigError, match=path.split(".")[-1]):
        load_config(_with(path, value))


def test_inf_written_in_yaml_is_refused(tmp_path):
    path = tmp_path / "inf.yaml"
    path.write_text("n_nodes: 4\nreward:\n  carbon: .inf\n")
    with pytest.raises(ConfigError, match=r"reward\.carbon = inf: Input should be a finite number"):
        load_config(path)


@pytest.mark.parametrize("value", [1e-6, 0.5, 1e-300])
def test_round_minutes_below_a_minute_is_a_clear_error(value):
    with pytest.raises(ConfigError, match="round_minutes"):
        load_config(_with("round_minutes", value))


def test_round_minutes_pandas_cannot_index_by_is_refused_at_the_edge():
    # 1440 / 1.0000000001 rounds per day is not whole; 7.5 min (450 s) is fine
    assert load_config(_with("round_minutes", 7.5)).round_minutes == 7.5
    with pytest.raises(ConfigError, match="round_minutes"):
        load_config(_with("round_minutes", 1.0000000001))


def test_a_huge_fleet_is_refused_naming_the_fields_that_drive_memory(monkeypatch):
    with pytest.raises(ConfigError, match=r"n_nodes.*GiB") as caught:
        load_config({"n_nodes": 65536})
    message = str(caught.value)
    assert "observation.adjacency" in message and "topology" in message
    assert len(message) < 2_000


def test_memory_check_compares_with_the_device_memory(monkeypatch):
    config = {"n_nodes": 2048, "observation": {"adjacency": False}, "topology": {"kind": "ring"}}
    need = footprint.estimate_bytes(load_config(config))
    assert need > footprint.ALWAYS_FITS_BYTES
    monkeypatch.setattr(footprint, "device_memory_bytes", lambda device: int(need * 0.9))
    with pytest.raises(ConfigError, match="n_nodes"):
        load_config(config)
    monkeypatch.setattr(footprint, "device_memory_bytes", lambda device: int(need * 1.1))
    assert load_config(config).n_nodes == 2048


@pytest.mark.parametrize("field, value", [("max_rounds", 10**9), ("learning.samples_per_node", 10**9),
                                          ("learning.local_steps", 10**7), ("learning.batch_size", 10**8)])
def test_huge_sizes_are_refused_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field.split(".")[-1]):
        load_config(_with(field, value))


def test_every_shipped_config_is_far_below_the_always_fits_bound():
    from greengossip.envs.shipped import shipped_names

    for name in shipped_names():
        assert footprint.estimate_bytes(load_config(name)) < footprint.ALWAYS_FITS_BYTES, name


def test_cuda_without_cuda_names_the_field_and_the_available_devices(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"device = 'cuda'.*not available.*available devices: \['cpu'\]"):
        load_config(_with("device", "cuda"))
    with pytest.raises(ConfigError, match=r"device = 'cuda:3'"):
        load_config(_with("device", "cuda:3"))


@pytest.mark.parametrize("value", ["tpu", "mps", "", "cuda:x"])
def test_unknown_devices_are_refused(value):
    with pytest.raises(ConfigError, match="device"):
        load_config(_with("device", value))


def test_error_messages_are_truncated_whatever_the_value():
    huge = {"key": ["x" * 10_000] * 1_000}
    with pytest.raises(ConfigError) as caught:
        load_config(dict(TINY, unknown=huge, device="d" * 100_000, regions=[{"name": "y" * 100_000}]))
    assert len(str(caught.value)) < 3_000


def test_many_errors_are_listed_in_part():
    config = {f"unknown_{i}": i for i in range(100)}
    with pytest.raises(ConfigError, match="and 80 more"):
        load_config(config)
