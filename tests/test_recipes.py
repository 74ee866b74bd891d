"""The shipped training recipes: the quick start spelled out, ablations one step away from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from greengossip.envs.shipped import TRAINING, shipped_dir
from greengossip.training.settings import SettingsError, load_settings
from tests.conftest import ROOT

RECIPES = ROOT / "configs" / "train"
ABLATIONS = sorted((RECIPES / "ablations").glob("*.yaml"))


def test_the_quick_start_recipe_is_found_by_name_and_spelled_out():
    path = shipped_dir(TRAINING) / "quick_start.yaml"
    assert "extends" not in yaml.safe_load(path.read_text())
    settings = load_settings("quick_start")
    assert settings.policy.prior is not None and settings.carbon_guard == 1.0
    assert settings.also_train_on == ["attack_heavy"]


def test_an_ablation_is_found_by_its_name_under_the_shipped_recipes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nowhere near the checkout's configs/
    assert load_settings("ablations/no_carbon_guard").carbon_guard is None
    with pytest.raises(SettingsError, match="shipped names: .*quick_start"):
        load_settings("ablations/no_such_recipe")


@pytest.mark.parametrize("path", sorted(RECIPES.rglob("*.yaml")), ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_recipe_loads_and_extends_at_most_one_file_that_extends_nothing(path: Path):
    load_settings(path)
    parent = yaml.safe_load(path.read_text()).get("extends")
    if parent is not None:
        assert "extends" not in yaml.safe_load((path.parent / parent).read_text())


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.stem)
def test_an_ablation_extends_the_quick_start_and_changes_something(path: Path):
    data = yaml.safe_load(path.read_text())
    assert data.pop("extends") == "../quick_start.yaml"
    assert data, f"{path.name} changes nothing"
    assert load_settings(path) != load_settings("quick_start")
