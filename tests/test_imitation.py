"""Behaviour-cloning warm start (training/imitation.py): returns, fitting, settings and the train path."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import yaml

from greengossip.envs.config import load_config
from greengossip.training.builders import make_vec_env
from greengossip.training.cli import main
from greengossip.training.imitation import collect_demonstrations, discounted_returns, fit
from greengossip.training.settings import SettingsError, load_settings
from greengossip.training.train import build_model
from tests.conftest import ROOT, TINY
from tests.test_train import _scalar_tags

TINY_SETTINGS = ROOT / "configs" / "train" / "tiny.yaml"
HEURISTIC = "energy_carbon_trust"


def test_returns_to_go_restart_at_episode_ends_and_mark_the_unfinished_tail():
    rewards = np.array([[1.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    dones = np.array([[False, False], [True, False], [False, False]])
    returns, complete = discounted_returns(rewards, dones, gamma=0.5)
    np.testing.assert_allclose(returns[:, 0], [1 + 0.5 * 2, 2, 4])
    np.testing.assert_allclose(returns[:, 1], [1 + 0.5 + 0.25, 1 + 0.5, 1])
    assert complete.tolist() == [[True, False], [True, False], [False, False]]


@pytest.mark.parametrize("algo", ["maskable_ppo", "ppo"])
def test_warm_start_makes_the_policy_agree_with_the_heuristic(algo, tmp_path):
    settings = load_settings(TINY_SETTINGS, algo=algo, n_envs=2, track_carbon=False)
    venv = make_vec_env([load_config(TINY)], settings, tmp_path / "monitor.csv")
    try:
        model = build_model(settings, venv, tmp_path, resume=None)
        demonstrations = collect_demonstrations(model.get_env(), HEURISTIC, 512, model.gamma, seed=0)
        imitation = settings.imitation
        # twice the settings' epochs: depending on the initialisation, the fit leaves its first plateau (one
        # action per kind of node, about 0.75 agreement) after 10 to 15 epochs
        summary = fit(model, demonstrations, 2 * imitation.epochs, imitation.batch_size, imitation.learning_rate,
                      imitation.value_coef, entropy_coef=0.0)
        predicted, _ = model.predict(
            demonstrations.observations,
            deterministic=True,
            **({"action_masks": demonstrations.action_masks} if algo == "maskable_ppo" else {}),
        )
    finally:
        venv.close()
    assert demonstrations.steps == 512 and demonstrations.complete.any()
    # the heuristic's choices depend on each node's grid (8-bit vs full model), so one constant action
    # per node cannot reach the agreement asked for here
    assert summary.initial_agreement < 0.5 < 0.9 < summary.agreement, summary
    assert summary.agreement == pytest.approx(float(np.mean(predicted == demonstrations.actions)))
    assert summary.cross_entropy < 0.5 and np.isfinite(summary.value_loss)


def test_entropy_bonus_keeps_the_imitating_policy_stochastic(tmp_path):
    """Same rollouts, same fit, with and without the entropy term: both pick the heuristic's action
    deterministically, but only the regularised policy leaves probability on the others (for PPO)."""
    settings = load_settings(TINY_SETTINGS, n_envs=2, track_carbon=False)
    imitation = settings.imitation
    summaries = {}
    for entropy_coef in (0.0, 0.3):
        venv = make_vec_env([load_config(TINY)], settings, tmp_path / f"monitor{entropy_coef}.csv")
        try:
            model = build_model(settings, venv, tmp_path, resume=None)
            demonstrations = collect_demonstrations(model.get_env(), HEURISTIC, 512, model.gamma, seed=0)
            # actor only (no critic term) and enough passes for the plain fit to settle
            summaries[entropy_coef] = fit(model, demonstrations, 30, imitation.batch_size,
                                          imitation.learning_rate, 0.0, entropy_coef)
        finally:
            venv.close()
    plain, regularised = summaries[0.0], summaries[0.3]
    assert plain.agreement > 0.9 and regularised.agreement > 0.9, summaries
    # mean -log p(heuristic's action): the regularised fit leaves clearly more probability elsewhere
    assert regularised.cross_entropy > max(0.01, 100 * plain.cross_entropy), summaries


def test_unknown_heuristic_is_named_with_the_allowed_values():
    allowed = r"imitation\.heuristic = 'energy_carbon': .*allowed: \[.*'energy_carbon_trust'"
    with pytest.raises(SettingsError, match=allowed):
        load_settings(TINY_SETTINGS, imitation={"heuristic": "energy_carbon"})
    with pytest.raises(SettingsError, match=r"imitation\.heuristic = 'nope'"):
        load_settings(TINY_SETTINGS, imitate="nope")
    with pytest.raises(SettingsError, match="not recurrent_ppo"):
        load_settings(TINY_SETTINGS, algo="recurrent_ppo", imitate=HEURISTIC)
    # --imitate sets the heuristic and keeps the file's other imitation settings
    settings = load_settings(TINY_SETTINGS, imitate=HEURISTIC)
    assert (settings.imitation.heuristic, settings.imitation.steps) == (HEURISTIC, 1024)
    assert load_settings(TINY_SETTINGS).imitation.heuristic is None
    assert "| imitation.heuristic | energy_carbon_trust |" in settings.markdown()


def test_train_with_imitate_warm_starts_then_learns(tmp_path):
    quick = yaml.safe_load(TINY_SETTINGS.read_text())
    quick.update(
        maskable_ppo={"n_steps": 64, "batch_size": 64, "n_epochs": 2},
        imitation={"steps": 256, "epochs": 4},
        eval_episodes=1,
        eval_freq=10_000,
        track_carbon=False,
    )
    settings_path = tmp_path / "quick.yaml"
    settings_path.write_text(yaml.safe_dump(quick))
    out = tmp_path / "run"
    code = main(
        [
            "train", "--config", str(TINY), "--settings", str(settings_path), "--timesteps", "128",
            "--n-envs", "1", "--out", str(out), "--no-progress", "--no-compare", "--imitate", HEURISTIC,
        ]
    )
    assert code == 0
    assert (out / "model.zip").is_file()
    assert f"imitation warm start from {HEURISTIC}: 256 steps" in (out / "train.log").read_text()
    assert yaml.safe_load((out / "settings.yaml").read_text())["imitation"]["heuristic"] == HEURISTIC
    tags = _scalar_tags(out / "logs")
    for tag in ("imitation/cross_entropy", "imitation/value_loss", "imitation/agreement", "train/value_loss"):
        assert tag in tags, tag
    with (out / "monitor.csv").open() as handle:  # the heuristic's episodes are not the learner's
        handle.readline()
        assert sum(int(row["l"]) for row in csv.DictReader(handle)) <= 128
