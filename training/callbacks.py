"""SB3 callbacks of ``greengossip train``, one purpose each (after SB3's ``common/callbacks.py``).

* :class:`SettingsTextCallback` - the run's settings as TensorBoard text, once.
* :class:`EnvKpiCallback` - the env's KPIs from ``info`` (``env/*``, ``episode/*``) next to SB3's own.
* :class:`StepsPerSecondCallback` - ``charts/steps_per_second`` of every rollout.
* :class:`HeldOutEvalCallback` - deterministic episodes on fixed held-out seeds; keeps the best model
  (in this process, or in a :class:`BackgroundValidation` worker while training goes on).
* :class:`TrainingEmissionsCallback` - the training run's own footprint with codecarbon, offline.
* :class:`WallClockLimitCallback` - stops training after a wall-clock budget (benchmarks).

Episode outcomes are read from ``info`` of the step that ended the episode (``episode_*`` keys the
env adds there, and VecMonitor's ``episode``), never from the observation SB3 returns with ``done``:
the VecEnv has already reset that env by then.
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import multiprocessing
import shutil
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

TEXT_ONLY = ("stdout", "log", "json", "csv")  # formats that should not receive a Markdown blob

# Per-step info KPIs averaged over each rollout (0.0 when the env does not report one yet).
STEP_KPIS = (
    "accuracy",
    "carbon_g",
    "energy_wh",
    "grid_wh",
    "harvested_wh",
    "bytes_sent",
    "participants",
    "dropped_nodes",
    "malicious_participants",
    "attack_influence",
    "epsilon_spent",
    "consensus_distance",
)
# Episode outcomes present in the info of the last step.
EPISODE_KPIS = (
    "final_accuracy",
    "episode_carbon_g",
    "episode_energy_wh",
    "episode_rounds",
    "carbon_to_target_g",
    "rounds_to_target",
    "episode_malicious_participants",
)


def _number(value: Any) -> float | None:
    """A scalar from an info value (scalars, per-node arrays -> mean); None when absent or not numeric."""
    if value is None:
        return None
    try:
        number = float(np.mean(np.asarray(value, dtype=np.float64)))
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class SettingsTextCallback(BaseCallback):
    """Writes the run's settings (Markdown tables) to TensorBoard's text tab at the start of training."""

    def __init__(self, texts: dict[str, str]):
        super().__init__()
        self.texts = texts

    def _on_training_start(self) -> None:
        for tag, text in self.texts.items():
            self.logger.record(tag, text, exclude=TEXT_ONLY)

    def _on_step(self) -> bool:
        return True


class EnvKpiCallback(BaseCallback):
    """Averages the env's per-step KPIs and reward components over each rollout (``env/...``) and
    records episode outcomes as they happen (``episode/...``), ready for SB3's next log dump."""

    def __init__(self):
        super().__init__()
        self._sums: dict[str, float] = defaultdict(float)
        self._steps = 0
        self._episodes: dict[str, list[float]] = defaultdict(list)

    def _on_step(self) -> bool:
        for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True):
            self._steps += 1
            for key in STEP_KPIS:
                self._sums[key] += _number(info.get(key, 0.0)) or 0.0
            for name, value in info.get("reward_components", {}).items():
                self._sums[f"reward_{name}"] += float(value)
            if done and "final_accuracy" in info:
                for key in EPISODE_KPIS:
                    number = _number(info.get(key))
                    if number is not None:
                        self._episodes[key].append(number)
                self._episodes["target_reached"].append(float(info.get("rounds_to_target") is not None))
        return True

    def _on_rollout_end(self) -> None:
        if self._steps:
            for key, total in self._sums.items():
                self.logger.record(f"env/{key}", total / self._steps)
        for key, values in self._episodes.items():
            self.logger.record(f"episode/{key.removeprefix('episode_')}", float(np.mean(values)))
        self._sums.clear()
        self._episodes.clear()
        self._steps = 0


class StepsPerSecondCallback(BaseCallback):
    """``charts/steps_per_second``: env steps per wall-clock second over the last rollout plus update."""

    def __init__(self):
        super().__init__()
        self._last: tuple[float, int] | None = None

    def _on_rollout_end(self) -> None:
        now = time.perf_counter()
        if self._last is not None and now > self._last[0]:
            self.logger.record(
                "charts/steps_per_second", (self.num_timesteps - self._last[1]) / (now - self._last[0])
            )
        self._last = (now, self.num_timesteps)

    def _on_step(self) -> bool:
        return True


def run_episode(model, env: gym.Env, seed: int, deterministic: bool = True) -> dict[str, Any]:
    """One episode of an SB3 model on a plain (non-vector) env; the last step's info plus the return.

    Passes the env's action masks to models that take them and carries a recurrent model's state.
    """
    obs, _ = env.reset(seed=seed)
    takes_masks = "action_masks" in inspect.signature(model.predict).parameters
    state, episode_start, total = None, np.ones((1,), dtype=bool), 0.0
    while True:
        extra = {"action_masks": env.unwrapped.action_masks()} if takes_masks else {}
        action, state = model.predict(
            obs, state=state, episode_start=episode_start, deterministic=deterministic, **extra
        )
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        episode_start = np.zeros((1,), dtype=bool)
        if terminated or truncated:
            return {**info, "return": total, "target_reached": bool(terminated)}


def run_vec_episodes(model, venv, seeds: Sequence[int], deterministic: bool = True,
                     on_action: Callable[[np.ndarray, np.ndarray], None] | None = None) -> list[dict[str, Any]]:
    """One episode on each environment of an SB3 ``VecEnv`` (environment i reset with ``seeds[i]``; the
    seeds consecutive, as ``VecEnv.seed`` hands them out), all stepped together: one policy call and one
    batched round per step instead of one per environment. The same results as ``run_episode`` on each
    seed in turn for a feed-forward policy (environments of the batched vector env match single envs);
    environments whose episode has ended are stepped on until the last one ends, and ignored.
    ``on_action(action, running)`` sees each step's (B, ...) actions and which episodes are still on."""
    seeds = list(seeds)
    if len(seeds) != venv.num_envs or seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise ValueError(f"need {venv.num_envs} consecutive seeds, one per environment; got {seeds}")
    venv.seed(seeds[0])
    obs = venv.reset()
    takes_masks = "action_masks" in inspect.signature(model.predict).parameters
    results: list[dict[str, Any] | None] = [None] * venv.num_envs
    returns = np.zeros(venv.num_envs)
    while any(result is None for result in results):
        extra = {"action_masks": np.stack(venv.env_method("action_masks"))} if takes_masks else {}
        action, _ = model.predict(obs, deterministic=deterministic, **extra)
        if on_action is not None:
            on_action(np.asarray(action), np.array([result is None for result in results]))
        obs, rewards, dones, infos = venv.step(action)
        for index in range(venv.num_envs):
            if results[index] is not None:
                continue
            returns[index] += float(rewards[index])
            if dones[index]:
                info = {key: value for key, value in infos[index].items() if key != "terminal_observation"}
                results[index] = {**info, "return": float(returns[index]),
                                  "target_reached": not info.get("TimeLimit.truncated", False)}
    return results


def validation_episodes(model, env, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """One deterministic episode per seed: all at once on a ``VecEnv`` with one environment per seed
    (``run_vec_episodes``), one after another on a plain env."""
    if isinstance(env, VecEnv):
        return run_vec_episodes(model, env, seeds)
    return [run_episode(model, env, seed) for seed in seeds]


_VALIDATION_WORKER: dict[str, Any] = {}


def _start_validation_worker(scenarios: dict[str, Any], settings) -> None:
    import torch

    from greengossip.training.train import make_eval_env

    torch.set_num_threads(1)
    _VALIDATION_WORKER.update(settings=settings,
                              envs={name: make_eval_env(config, settings) for name, config in scenarios.items()})


def _validate_snapshot(path: str) -> dict[str, list[dict[str, Any]]]:
    from greengossip.agents.policies import algorithm_class

    settings = _VALIDATION_WORKER["settings"]
    model = algorithm_class(settings.algo).load(path, device="cpu")
    return {name: validation_episodes(model, env, settings.validation_seeds)
            for name, env in _VALIDATION_WORKER["envs"].items()}


class BackgroundValidation:
    """The held-out validations of a training run in one worker process, while training goes on.

    A validation of the quick-start recipe (20 episodes on each of two scenarios) takes about a fifth of a
    training run's wall-clock time when the learner waits for it. Learner and validation are one thread
    each, so on a machine with a free core the worker gives that time back to training. ``submit`` saves
    the model as it is (a snapshot in ``directory``) and queues its validation; the worker loads the
    snapshot and runs the same deterministic episodes on its own copies of the validation envs, so each
    validation's figures are the ones the learner would have computed at that step. ``finished`` hands
    the results back in submission order. At most ``max_pending`` validations wait at a time: a learner
    that outpaces its worker (a machine without a free core) waits for the oldest one instead of queuing
    snapshots without end."""

    def __init__(self, scenarios: dict[str, Any], settings, directory: str | Path, max_pending: int = 2):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_pending = max_pending
        # spawn: the learner's torch has run threads already, and a fork would inherit its locks
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_validation_worker, initargs=(scenarios, settings))
        self._pending: deque[tuple[int, Path, Future]] = deque()

    def submit(self, model, steps: int) -> list[tuple[int, dict[str, list[dict[str, Any]]], Path]]:
        """Queues the validation of ``model`` at ``steps``; returns the results it waited for to keep the
        queue within ``max_pending`` (as ``finished`` gives them)."""
        waited = list(self.finished(wait_for=len(self._pending) + 1 - self.max_pending))
        snapshot = self.directory / f"snapshot_{steps}.zip"
        model.save(snapshot)
        self._pending.append((steps, snapshot, self._pool.submit(_validate_snapshot, str(snapshot))))
        return waited

    def finished(self, wait_for: int = 0) -> Iterator[tuple[int, dict[str, list[dict[str, Any]]], Path]]:
        """(steps, episodes by scenario, snapshot path) of the validations done so far, oldest first; waits
        for the oldest ``wait_for`` (all of them: ``len(self)``) whether done or not."""
        while self._pending and (wait_for > 0 or self._pending[0][2].done()):
            steps, snapshot, future = self._pending.popleft()
            wait_for -= 1
            yield steps, future.result(), snapshot

    def __len__(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        for _steps, snapshot, future in self._pending:
            future.cancel()
            snapshot.unlink(missing_ok=True)
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.directory.rmdir()  # every snapshot has been recorded and removed
        except OSError:
            pass


class HeldOutEvalCallback(BaseCallback):
    """Every ``eval_freq`` env steps (and at the end), runs the deterministic policy on the same held-out
    seeds, logs ``eval/*`` and saves ``best_model_path`` whenever the mean return improves. ``env`` is a
    plain env (the seeds one after another) or a ``VecEnv`` with one environment per seed (all at once,
    ``run_vec_episodes``); or a mapping from scenario names to such envs, each run on the same seeds. Then
    the score is the mean return over all their episodes (each scenario weighs the same), and each
    scenario's return, carbon and attacker participation are logged as well (``eval/<name>/*``).

    Unlike SB3's EvalCallback the seed list is fixed, so successive evaluations are comparable, and the
    best score survives a resume (``<best_model_path>.json``).

    ``carbon_guard``: an evaluation may only become the best when the first scenario's mean episode
    carbon is at most ``carbon_guard`` times the first evaluation's and it reaches the target at least as
    often. For a residual policy the first evaluation is, in effect, its prior rule, so a rise of the
    mean return elsewhere (attack_heavy) cannot pay for a model that spends more than the rule on the
    training config. With the guard, the model the plain rule would keep is saved as well
    (``<best_model_path stem>_unguarded.zip`` and ``.json``), so one run compares both picks on the same
    training.

    ``background``: a :class:`BackgroundValidation` that runs the episodes in a worker process while
    training goes on; ``env`` then only names the scenarios. Results are recorded in order as they come
    back, under the step they were taken at, and training end waits for the last one. The figures, the
    picks and the files are the same as in this process.
    """

    SCORE = "return"
    PER_SCENARIO = {"return": "return", "carbon_g": "episode_carbon_g",
                    "malicious": "episode_malicious_participants", "target_reached": "target_reached"}

    def __init__(
        self,
        env: gym.Env | VecEnv | dict[str, gym.Env | VecEnv],
        seeds: Sequence[int],
        eval_freq: int,
        best_model_path: str | Path,
        log_path: str | Path,
        on_log: Callable[[str], None] | None = None,
        carbon_guard: float | None = None,
        background: BackgroundValidation | None = None,
    ):
        super().__init__()
        self.background = background
        self.envs = dict(env) if isinstance(env, dict) else {"": env}
        self.seeds = list(seeds)
        self.eval_freq = eval_freq
        self.best_model_path = Path(best_model_path)
        self.best_record = self.best_model_path.with_suffix(".json")
        self.log_path = Path(log_path)
        self.on_log = on_log or (lambda message: None)
        self.carbon_guard = carbon_guard
        best = self._record(self.best_model_path)  # a resumed run's best score and guard reference
        self.best_score = float(best.get("score", -math.inf))
        self.reference: dict[str, float] | None = best.get("reference")  # the first evaluation's
        self.unguarded_model_path = self.best_model_path.with_name(f"{self.best_model_path.stem}_unguarded.zip")
        self.best_unguarded_score = float(self._record(self.unguarded_model_path).get("score", -math.inf))
        self._last_eval = None

    def _on_training_start(self) -> None:
        self._last_eval = self.num_timesteps

    def _on_step(self) -> bool:
        if self.num_timesteps - self._last_eval >= self.eval_freq:
            self.evaluate()
        elif self.background is not None:
            self._record_finished(self.background.finished())
        return True

    def _on_training_end(self) -> None:
        if self._last_eval != self.num_timesteps or not self.best_model_path.is_file():
            self.evaluate()
        if self.background is not None:
            self._record_finished(self.background.finished(wait_for=len(self.background)))

    def _episodes(self, env) -> list[dict[str, Any]]:
        return validation_episodes(self.model, env, self.seeds)

    def evaluate(self) -> dict[str, float] | None:
        """Validates the model as it is now: returns the summary, or None when a ``background`` worker
        runs it (recorded later, when it comes back)."""
        self._last_eval = self.num_timesteps
        if self.background is not None:
            self._record_finished(self.background.submit(self.model, self.num_timesteps))
            return None
        return self._log_validation(self.num_timesteps, {name: self._episodes(env) for name, env in self.envs.items()})

    def _record_finished(self, results: Iterable[tuple[int, dict[str, list[dict[str, Any]]], Path]]) -> None:
        for steps, by_scenario, snapshot in results:
            self._log_validation(steps, by_scenario, snapshot)
            snapshot.unlink(missing_ok=True)

    def _log_validation(self, steps: int, by_scenario: dict[str, list[dict[str, Any]]],
                        snapshot: Path | None = None) -> dict[str, float]:
        """Logs the validation of the model at ``steps`` and keeps it if it is the best so far (the model
        itself, or its ``snapshot`` file when it was validated in the background)."""
        episodes = [episode for group in by_scenario.values() for episode in group]
        summary = {
            "return": float(np.mean([e["return"] for e in episodes])),
            "final_accuracy": float(np.mean([e["final_accuracy"] for e in episodes])),
            "carbon_g": float(np.mean([e["episode_carbon_g"] for e in episodes])),
            "energy_wh": float(np.mean([e["episode_energy_wh"] for e in episodes])),
            "rounds": float(np.mean([e["episode_rounds"] for e in episodes])),
            "target_reached": float(np.mean([e["target_reached"] for e in episodes])),
        }
        if len(by_scenario) > 1:
            for name, group in by_scenario.items():
                for key, source in self.PER_SCENARIO.items():
                    summary[f"{name}/{key}"] = float(np.mean([e[source] for e in group]))
        for key, value in summary.items():
            self.logger.record(f"eval/{key}", value)
        on_config_prefix = f"{next(iter(by_scenario))}/" if len(by_scenario) > 1 else ""
        on_config = {key: summary[on_config_prefix + key] for key in ("carbon_g", "target_reached")}
        if self.reference is None:
            self.reference = on_config
        improved = summary[self.SCORE] > self.best_score and self._within_guard(on_config)
        if improved:
            self.best_score = summary[self.SCORE]
            self._save(self.best_model_path, steps, summary, snapshot, reference=self.reference)
        if self.carbon_guard is not None and summary[self.SCORE] > self.best_unguarded_score:
            self.best_unguarded_score = summary[self.SCORE]
            self._save(self.unguarded_model_path, steps, summary, snapshot)
        self.logger.record("eval/best_return", self.best_score)
        self.logger.dump(steps)
        new_file = not self.log_path.is_file()
        with self.log_path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["timesteps", *summary, "best"])
            if new_file:
                writer.writeheader()
            writer.writerow({"timesteps": steps, **summary, "best": improved})
        scenarios = "".join(
            f"; {name}: return {summary[f'{name}/return']:.3f}, carbon {summary[f'{name}/carbon_g']:.2f} g, "
            f"attackers {summary[f'{name}/malicious']:.0f}"
            for name in by_scenario if len(by_scenario) > 1
        )
        self.on_log(
            f"eval @ {steps} steps on seeds {self.seeds[0]}..{self.seeds[-1]}: return "
            f"{summary['return']:.3f}, accuracy {summary['final_accuracy']:.3f}, "
            f"carbon {summary['carbon_g']:.2f} g, "
            f"target reached {summary['target_reached']:.0%}, rounds {summary['rounds']:.1f}"
            + scenarios + ("  (new best)" if improved else "")
        )
        return summary

    def _save(self, path: Path, steps: int, summary: dict[str, float], snapshot: Path | None = None,
              **extra) -> None:
        if snapshot is None:
            self.model.save(path)
        else:
            shutil.copyfile(snapshot, path)
        path.with_suffix(".json").write_text(json.dumps(
            {"score": summary[self.SCORE], "timesteps": steps, **summary, **extra}, indent=2))

    @staticmethod
    def _record(path: Path) -> dict[str, Any]:
        """A saved model's .json record (empty when the model or its record is missing)."""
        record = path.with_suffix(".json")
        return json.loads(record.read_text()) if record.is_file() and path.is_file() else {}

    def _within_guard(self, on_config: dict[str, float]) -> bool:
        if self.carbon_guard is None:
            return True
        return (on_config["carbon_g"] <= self.carbon_guard * self.reference["carbon_g"]
                and on_config["target_reached"] >= self.reference["target_reached"])


class TrainingEmissionsCallback(BaseCallback):
    """Measures the training run's own energy and emissions with codecarbon's OfflineEmissionsTracker
    (no network: the grid intensity comes from ``country_iso_code``), from the start of ``learn`` to its
    end; logs ``carbon/*``, appends codecarbon's ``emissions.csv`` in ``output_dir`` and keeps the
    figures in ``self.result``."""

    def __init__(
        self, country_iso_code: str, output_dir: str | Path, on_log: Callable[[str], None] | None = None
    ):
        super().__init__()
        self.country_iso_code = country_iso_code
        self.output_dir = Path(output_dir)
        self.on_log = on_log or (lambda message: None)
        self.result: dict[str, float] | None = None
        self._tracker = None

    def _on_training_start(self) -> None:
        import logging

        from codecarbon import OfflineEmissionsTracker

        self.output_dir.mkdir(parents=True, exist_ok=True)
        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        self._tracker = OfflineEmissionsTracker(
            country_iso_code=self.country_iso_code,
            output_dir=str(self.output_dir),
            project_name="greengossip-train",
            log_level="error",
            save_to_file=True,
            measure_power_secs=15,
            allow_multiple_runs=True,
        )
        self._tracker.start()

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if self._tracker is None:
            return
        self._tracker.stop()
        data = getattr(self._tracker, "final_emissions_data", None)
        self._tracker = None
        if data is None:  # codecarbon swallows its own errors; say so instead of logging zeros
            self.on_log("codecarbon could not measure this run (see its warnings above)")
            return
        self.result = {
            "emissions_g": float(data.emissions) * 1000.0,
            "energy_kwh": float(data.energy_consumed),
            "duration_s": float(data.duration),
            "cpu_power_w": float(data.cpu_power),
            "country_iso_code": self.country_iso_code,
        }
        self.logger.record("carbon/training_emissions_g", self.result["emissions_g"])
        self.logger.record("carbon/training_energy_kwh", self.result["energy_kwh"])
        self.logger.dump(self.num_timesteps)
        self.on_log(
            f"training footprint (codecarbon, offline, {self.country_iso_code}): "
            f"{self.result['emissions_g']:.3f} gCO2e, "
            f"{self.result['energy_kwh'] * 1000:.3f} Wh over {self.result['duration_s']:.0f} s"
        )


class WallClockLimitCallback(BaseCallback):
    """Stops ``learn`` once ``minutes`` of wall-clock time have passed since training started (a run
    stopped this way is not reproducible in length; use it for time-boxed benchmarks, not for tests)."""

    def __init__(self, minutes: float, on_log: Callable[[str], None] | None = None):
        super().__init__()
        self.seconds = minutes * 60.0
        self.on_log = on_log or (lambda message: None)
        self._started = 0.0

    def _on_training_start(self) -> None:
        self._started = time.perf_counter()

    def _on_step(self) -> bool:
        if time.perf_counter() - self._started < self.seconds:
            return True
        self.on_log(
            f"wall-clock budget of {self.seconds / 60:.1f} min reached at {self.num_timesteps} steps; "
            "stopping"
        )
        return False
