"""SB3 callbacks of ``greengossip train``, one purpose each (after SB3's ``common/callbacks.py``).

* :class:`SettingsTextCallback` - the run's settings as TensorBoard text, once.
* :class:`EnvKpiCallback` - the env's KPIs from ``info`` (``env/*``, ``episode/*``) next to SB3's own.
* :class:`StepsPerSecondCallback` - ``charts/steps_per_second`` of every rollout.
* :class:`HeldOutEvalCallback` - deterministic episodes on fixed held-out seeds; keeps the best model.
* :class:`SharedPolicyEvalCallback` - the same for a policy shared by every node (``--multi-agent``).
* :class:`AtomicCheckpointCallback` - periodic checkpoints, each written whole or not at all.
* :class:`StopOnInterrupt` - Ctrl-C ends training after the current step, so that the model can be saved.
* :class:`TrainingEmissionsCallback` - the training run's own footprint with codecarbon, offline.
* :class:`WallClockLimitCallback` - stops training after a wall-clock budget (benchmarks).

Episode outcomes are read from ``info`` of the step that ended the episode (``episode_*`` keys the
env adds there, and VecMonitor's ``episode``), never from the observation SB3 returns with ``done``:
the VecEnv has already reset that env by then. Validation episodes are played by ``rollout.py``.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from codecarbon import OfflineEmissionsTracker
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from greengossip.agents.decentralized import DecentralizedScheduler
from greengossip.training.rollout import play_episode, play_vec_episodes
from greengossip.training.run_files import append_csv_row, atomic_save, atomic_write_text

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


def validation_episodes(model, env, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """One deterministic episode per seed: all at once on a ``VecEnv`` with one environment per seed,
    one after another on a plain env."""
    if isinstance(env, VecEnv):
        return play_vec_episodes(model, env, seeds)
    return [play_episode(model, env, seed) for seed in seeds]


class PeriodicEvalCallback(BaseCallback):
    """Calls ``evaluate()`` every ``eval_freq`` env steps and once more at the end of training, unless the
    last evaluation was at the final step and its best model is on disk, or ``skip_final()`` says the run
    was interrupted. Subclasses implement ``evaluate`` (which sets ``_last_eval``) and ``best_model_file``."""

    def __init__(self, eval_freq: int, skip_final: Callable[[], bool], at_start: bool = False):
        super().__init__()
        self.eval_freq = eval_freq
        self.skip_final = skip_final
        self.at_start = at_start
        self._last_eval = 0

    def best_model_file(self) -> Path:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError

    def _on_training_start(self) -> None:
        self._last_eval = self.num_timesteps
        if self.at_start and self.num_timesteps == 0:  # the untrained model: a residual policy's prior rule
            self.evaluate()

    def _on_step(self) -> bool:
        if self.num_timesteps - self._last_eval >= self.eval_freq:
            self.evaluate()
        return True

    def _on_training_end(self) -> None:
        if self.skip_final():
            return
        if self._last_eval != self.num_timesteps or not self.best_model_file().is_file():
            self.evaluate()


class HeldOutEvalCallback(PeriodicEvalCallback):
    """Every ``eval_freq`` env steps (and at the end), runs the deterministic policy on the same held-out
    seeds, logs ``eval/*`` and saves ``best_model_path`` whenever the mean return improves. ``env`` is a
    plain env (the seeds one after another) or a ``VecEnv`` with one environment per seed (all at once,
    ``rollout.play_vec_episodes``); or a mapping from scenario names to such envs, each run on the same seeds. Then
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

    ``keep_targets``: an evaluation may only become the best when every scenario reaches the target at
    least as often as in the first evaluation (per scenario, not on average: a model that gains return in
    one family cannot pay with missed targets in another).

    ``skip_final``: when it returns True at the end of training (an interrupted run), no last validation
    is run. ``at_start``: also validate before the first step of a new run (not a resumed one). Models and
    records are written atomically (``run_files.atomic_save``).
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
        skip_final: Callable[[], bool] = lambda: False,
        at_start: bool = False,
        keep_targets: bool = False,
    ):
        super().__init__(eval_freq, skip_final, at_start)
        self.envs = dict(env) if isinstance(env, dict) else {"": env}
        self.seeds = list(seeds)
        self.best_model_path = Path(best_model_path)
        self.best_record = self.best_model_path.with_suffix(".json")
        self.log_path = Path(log_path)
        self.on_log = on_log or (lambda message: None)
        self.carbon_guard = carbon_guard
        self.keep_targets = keep_targets
        best = self._record(self.best_model_path)  # a resumed run's best score and guard references
        self.best_score = float(best.get("score", -math.inf))
        self.reference: dict[str, float] | None = best.get("reference")  # the first evaluation's
        self.reference_targets: dict[str, float] | None = best.get("reference_targets")
        self.unguarded_model_path = self.best_model_path.with_name(f"{self.best_model_path.stem}_unguarded.zip")
        self.best_unguarded_score = float(self._record(self.unguarded_model_path).get("score", -math.inf))

    def best_model_file(self) -> Path:
        return self.best_model_path

    def _episodes(self, env) -> list[dict[str, Any]]:
        return validation_episodes(self.model, env, self.seeds)

    def evaluate(self) -> dict[str, float]:
        """Validates the model as it is now and returns the summary."""
        self._last_eval = self.num_timesteps
        by_scenario = {name: self._episodes(env) for name, env in self.envs.items()}
        return self._log_validation(self.num_timesteps, by_scenario)

    def _log_validation(self, steps: int, by_scenario: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
        """Logs the validation of the model at ``steps`` and keeps it if it is the best so far."""
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
        targets = {name: float(np.mean([e["target_reached"] for e in group])) for name, group in by_scenario.items()}
        if self.reference is None:
            self.reference = on_config
        if self.reference_targets is None:
            self.reference_targets = targets
        improved = (summary[self.SCORE] > self.best_score and self._within_guard(on_config)
                    and self._targets_kept(targets))
        if improved:
            self.best_score = summary[self.SCORE]
            self._save(self.best_model_path, steps, summary, reference=self.reference,
                       reference_targets=self.reference_targets)
        if self.carbon_guard is not None and summary[self.SCORE] > self.best_unguarded_score:
            self.best_unguarded_score = summary[self.SCORE]
            self._save(self.unguarded_model_path, steps, summary)
        self.logger.record("eval/best_return", self.best_score)
        self.logger.dump(steps)
        append_csv_row(self.log_path, {"timesteps": steps, **summary, "best": improved})
        scenarios = "".join(
            f"; {name}: return {summary[f'{name}/return']:.3f}, carbon {summary[f'{name}/carbon_g']:.2f} g, "
            f"attackers {summary[f'{name}/malicious']:.0f}, targets {targets[name]:.0%}"
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

    def _save(self, path: Path, steps: int, summary: dict[str, float], **extra) -> None:
        atomic_save(self.model, path)
        atomic_write_text(path.with_suffix(".json"), json.dumps(
            {"score": summary[self.SCORE], "timesteps": steps, **summary, **extra}, indent=2))

    @staticmethod
    def _record(path: Path) -> dict[str, Any]:
        """A saved model's .json record (empty when the model or its record is missing)."""
        record = path.with_suffix(".json")
        return json.loads(record.read_text()) if record.is_file() and path.is_file() else {}

    def _targets_kept(self, targets: dict[str, float]) -> bool:
        if not self.keep_targets:
            return True
        return all(targets[name] >= self.reference_targets.get(name, 0.0) for name in targets)

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


class SharedPolicyEvalCallback(PeriodicEvalCallback):
    """Every ``eval_freq_rounds`` rounds (and at the end): a policy shared by every node, acting as a fleet
    scheduler (``DecentralizedScheduler``) on fixed held-out seeds of the single-agent ``env``; logs
    ``eval/*`` and keeps ``best_model.zip`` (+ ``.json``) in ``out`` by mean return. SB3 counts node
    decisions, ``n_nodes`` per round."""

    def __init__(self, env: gym.Env, seeds: Sequence[int], eval_freq_rounds: int, n_nodes: int, out: Path,
                 on_log: Callable[[str], None] | None = None, skip_final: Callable[[], bool] = lambda: False):
        super().__init__(eval_freq_rounds * n_nodes, skip_final)
        self.env, self.seeds, self.n_nodes = env, list(seeds), n_nodes
        self.best_path, self.csv_path = out / "best_model.zip", out / "evaluations.csv"
        record = self.best_path.with_suffix(".json")
        best = json.loads(record.read_text()) if record.is_file() and self.best_path.is_file() else {}
        self.best_score, self.best_summary = float(best.get("score", -math.inf)), best
        self.on_log = on_log or (lambda message: None)

    def best_model_file(self) -> Path:
        return self.best_path

    def evaluate(self) -> dict[str, float]:
        self._last_eval = self.num_timesteps
        scheduler = DecentralizedScheduler(self.model, env=self.env)
        episodes = [play_episode(scheduler, self.env, seed) for seed in self.seeds]
        summary = {key: float(np.mean([e[source] for e in episodes])) for key, source in (
            ("return", "return"), ("final_accuracy", "final_accuracy"), ("carbon_g", "episode_carbon_g"),
            ("energy_wh", "episode_energy_wh"), ("rounds", "episode_rounds"), ("target_reached", "target_reached"))}
        for key, value in summary.items():
            self.logger.record(f"eval/{key}", value)
        rounds = self.num_timesteps // self.n_nodes
        improved = summary["return"] > self.best_score
        if improved:
            self.best_score, self.best_summary = summary["return"], summary
            atomic_save(self.model, self.best_path)
            atomic_write_text(self.best_path.with_suffix(".json"),
                              json.dumps({"score": self.best_score, "trained_rounds": rounds, **summary}, indent=2))
        append_csv_row(self.csv_path, {"trained_rounds": rounds, **summary, "best": improved})
        self.on_log(f"eval @ {rounds} rounds: return {summary['return']:.3f}, "
                    f"accuracy {summary['final_accuracy']:.3f}, carbon {summary['carbon_g']:.2f} g, "
                    f"target reached {summary['target_reached']:.0%}"
                    + ("  (new best)" if improved else ""))
        return summary


class AtomicCheckpointCallback(BaseCallback):
    """Every ``save_freq`` calls, the model as ``folder/model_<steps>_steps.zip`` (the names SB3's
    CheckpointCallback gives), written to a temporary file and renamed into place: a save cut short
    leaves the earlier checkpoints as they were, never a truncated newest one."""

    def __init__(self, save_freq: int, folder: str | Path):
        super().__init__()
        self.save_freq = save_freq
        self.folder = Path(folder)

    def _init_callback(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def _on_step(self) -> bool:
        if self.n_calls % self.save_freq == 0:
            self.save()
        return True

    def save(self) -> Path:
        return atomic_save(self.model, self.folder / f"model_{self.num_timesteps}_steps.zip")


class StopOnInterrupt(BaseCallback):
    """The first Ctrl-C (SIGINT) during ``learn`` ends training after the current step, so that the
    caller saves a whole model; a second one interrupts at once. The handler is installed for the
    duration of ``learn`` only (and only in the main thread, where Python delivers signals)."""

    def __init__(self, on_log: Callable[[str], None] | None = None):
        super().__init__()
        self.requested = False
        self.on_log = on_log or (lambda message: None)
        self._previous = None

    def _on_training_start(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.on_log("interrupted: stopping after this step to save the model (Ctrl-C again to quit at once)")

    def _on_step(self) -> bool:
        return not self.requested

    def _on_training_end(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
