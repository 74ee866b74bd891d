"""Saved Stable-Baselines3 models as schedulers, and :func:`make_scheduler` for any scheduler spec.

``load_scheduler("runs/ppo.zip")`` reads the zip's metadata, picks the algorithm that saved it
(MaskablePPO, RecurrentPPO, PPO, A2C, TRPO; see :func:`detect_algorithm`), loads it on the CPU and wraps
it in a :class:`LearnedScheduler`, which has the same ``predict`` as every other scheduler and says
whether it wants the ``Dict`` or the flattened observation.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import sb3_contrib
import stable_baselines3
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.save_util import load_from_zip_file

from greengossip.agents.base import ObservationKind, Scheduler
from greengossip.agents.decentralized import DECENTRALIZED_PREFIX, load_decentralized_scheduler
from greengossip.agents.heuristics import HEURISTICS, build_heuristic, is_heuristic_spec
from greengossip.agents.node_linear import SUFFIX as NODE_LINEAR_SUFFIX
from greengossip.agents.node_linear import is_node_linear_spec, load_node_linear
from greengossip.agents.rule_switching import RuleSwitchingScheduler
from greengossip.envs.errors import UserError

# Tried in this order when the metadata does not settle it; sb3-contrib first because its classes
# are the specific ones (a MaskablePPO zip would also load as a plain PPO and then ignore masks).
ALGORITHMS = ("MaskablePPO", "RecurrentPPO", "PPO", "A2C", "TRPO")


def _algorithm_class(name: str):
    return getattr(stable_baselines3 if name in ("PPO", "A2C") else sb3_contrib, name)


def model_path(spec: str | Path) -> Path | None:
    """The saved model ``spec`` names (SB3 also accepts the path without ``.zip``), or None."""
    path = Path(spec)
    if path.is_file():
        return path
    with_suffix = path.with_name(path.name + ".zip")
    return with_suffix if with_suffix.is_file() else None


def detect_algorithm(path: str | Path) -> str:
    """Name of the algorithm that saved ``path``, from the policy class and hyperparameters it stored.

    Masked and recurrent policies subclass sb3-contrib's ``MaskableActorCriticPolicy`` /
    ``RecurrentActorCriticPolicy``; among plain actor-critic policies PPO stores ``clip_range``, TRPO
    ``cg_max_steps`` and A2C neither.
    """
    data, _params, _variables = load_from_zip_file(path, device="cpu", load_data=True,
                                                   print_system_info=False)
    if not data or "policy_class" not in data:
        raise UserError(f"{path} is not a Stable-Baselines3 model zip (no policy_class in its data)")
    policy_class = data["policy_class"]
    if isinstance(policy_class, type):
        if issubclass(policy_class, MaskableActorCriticPolicy):
            return "MaskablePPO"
        if issubclass(policy_class, RecurrentActorCriticPolicy):
            return "RecurrentPPO"
    if "cg_max_steps" in data:
        return "TRPO"
    if "clip_range" in data:
        return "PPO"
    return "A2C"


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime: float, algorithm: str | None):
    """The model itself, cached per process (evaluation runs one model on many seeds)."""
    try:
        names = [algorithm] if algorithm else [detect_algorithm(path)] + list(ALGORITHMS)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file fails anywhere inside SB3's reader
        raise UserError(f"{path} is not a readable Stable-Baselines3 model zip ({type(exc).__name__}: "
                        f"{str(exc)[:200]})") from None
    errors = []
    for name in dict.fromkeys(names):
        try:
            return name, _algorithm_class(name).load(path, device="cpu")
        except Exception as exc:  # noqa: BLE001 - try the next algorithm, report all at the end
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    raise UserError(f"could not load {path} with any of {names}:\n  " + "\n  ".join(errors))


class LearnedScheduler:
    """A trained SB3 model behind the scheduler interface.

    ``predict`` forwards to the model; ``action_masks`` (the env's ``action_masks()``) reaches
    MaskablePPO, the other algorithms ignore it. ``observation_kind`` is ``"flat"`` when the model
    was trained on a ``Box`` observation (``GreenGossip/EdgeLearningFlat-v3``), else ``"dict"``.
    """

    def __init__(self, model: Any, algorithm: str, path: str | Path | None = None, seed: int = 0):
        self.model = model
        self.algorithm = algorithm
        self.path = None if path is None else Path(path)
        self.seed = int(seed)
        self.observation_kind: ObservationKind = (
            "flat" if isinstance(model.observation_space, spaces.Box) else "dict")
        self._takes_masks = "action_masks" in inspect.signature(model.predict).parameters

    def __repr__(self) -> str:
        return f"LearnedScheduler({self.algorithm}, {self.path})"

    @property
    def name(self) -> str:
        return self.path.stem if self.path is not None else self.algorithm

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, Any]:
        kwargs = {"action_masks": action_masks} if self._takes_masks and action_masks is not None else {}
        return self.model.predict(observation, state=state, episode_start=episode_start,
                                  deterministic=deterministic, **kwargs)

    def check_env(self, env) -> None:
        """Fail early, and say why, when the model cannot read this env's observations."""
        if self.observation_kind != "flat":
            self._check_feature_widths(env)  # Dict policies (agents/policies.py) adapt to the fleet size
            return
        expected = self.model.observation_space.shape
        flat = spaces.flatdim(env.observation_space) if isinstance(env.observation_space, spaces.Dict) \
            else int(np.prod(env.observation_space.shape))
        if (flat,) != tuple(expected):
            raise UserError(
                f"{self.path} expects a flat observation of shape {expected}, but this env's flattened "
                f"observation has {flat} values; the model was trained on another fleet size or observation "
                "layout. Evaluate it on the config it was trained on, or train a node-set policy "
                "(agents/policies.py), which runs on any number of nodes.")


    def _check_feature_widths(self, env) -> None:
        """A node-set policy runs on any number of nodes, but only on the per-node and global features it
        was trained on: a model saved under an earlier observation layout is refused here, by name."""
        trained, current = self.model.observation_space, env.observation_space
        if not (isinstance(trained, spaces.Dict) and isinstance(current, spaces.Dict)):
            return
        for key in ("nodes", "global"):
            if key in trained.spaces and key in current.spaces:
                was, now = trained[key].shape[-1], current[key].shape[-1]
                if was != now:
                    raise UserError(
                        f"{self.path} was trained on {was} {key} features per observation, but this env has "
                        f"{now}: the model comes from another version of the environment (see CHANGELOG.md). "
                        "Train it again on this version.")


def load_scheduler(
    path: str | Path, env=None, seed: int = 0, algorithm: str | None = None
) -> LearnedScheduler | RuleSwitchingScheduler:
    """Load a saved SB3 model (PPO, MaskablePPO, A2C, RecurrentPPO, TRPO) as a scheduler; a model saved with
    ``switch_rules`` (a rule switch, ``training/rule_switching.py``) as a :class:`RuleSwitchingScheduler`.

    ``algorithm`` skips detection. With ``env`` the model's observation space is checked against it.
    """
    found = model_path(path)
    if found is None:
        raise FileNotFoundError(f"no saved model at {path} (nor {path}.zip)")
    resolved = found.resolve()
    name, model = _load(str(resolved), resolved.stat().st_mtime, algorithm)
    if seed is not None:
        model.set_random_seed(int(seed))
    if getattr(model, "switch_rules", None):  # a fleet-level choice among rules (agents/rule_switching.py)
        scheduler = RuleSwitchingScheduler(model, found, seed)
    else:
        scheduler = LearnedScheduler(model, name, found, seed)
    if env is not None:
        scheduler.check_env(env)
    return scheduler


# ---------------------------------------------------------------------------------------------- shipped models
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"  # installed as package data
# scheduler names of the shipped models: the centralized suite scheduler, the decentralized per-node policy
# and the per-node linear scheduler learned by evolution strategies
PRETRAINED = {"pretrained": "suite.zip", "pretrained-decentralized": "decentralized.zip",
              "pretrained-linear": "node_linear.npz"}


def resolve_pretrained(spec: str | Path) -> str:
    """``pretrained`` and ``pretrained-linear`` as the shipped models' paths, ``pretrained-decentralized`` as
    ``decentralized:<its path>``; any other spec unchanged. UserError when the shipped file is missing."""
    text = str(spec)
    if text not in PRETRAINED:
        return text
    path = PRETRAINED_DIR / PRETRAINED[text]
    if not path.is_file():
        raise UserError(f"scheduler {text!r} is the shipped model {path}, which is missing from this install; "
                        f"reinstall greengossip, or name a saved model by its path")
    return f"{DECENTRALIZED_PREFIX}{path}" if text == "pretrained-decentralized" else str(path)


# ---------------------------------------------------------------------------------------------- any spec
def is_model_spec(spec: str | Path) -> bool:
    """True when ``spec`` names a saved model rather than a heuristic."""
    return model_path(spec) is not None and not is_heuristic_spec(spec)


def scheduler_label(spec: str | Path) -> str:
    """Short name for tables and plots: the heuristic spec, or a model file's stem."""
    text = str(spec)
    if text in PRETRAINED:
        return text
    if text.startswith(DECENTRALIZED_PREFIX):
        return "decentralized-" + Path(text.split(":", 1)[1]).name.removesuffix(".zip")
    if is_node_linear_spec(text):
        return Path(text).name.removesuffix(NODE_LINEAR_SUFFIX)
    return Path(spec).name.removesuffix(".zip") if is_model_spec(spec) else text


def make_scheduler(spec: str | Path, env=None, seed: int = 0) -> Scheduler:
    """A scheduler from a heuristic name (optionally ``name:key=value,...``), a saved SB3 model path, a
    node-linear scheduler's ``.npz`` (``greengossip.agents.node_linear``), or a shipped model's name
    (``pretrained``, ``pretrained-decentralized``, ``pretrained-linear``; :func:`resolve_pretrained`).

    ``seed`` seeds randomised heuristics and the model's sampling; ``env`` (optional) lets a model
    check that it can read the env's observations.
    """
    text = resolve_pretrained(spec)
    if text.startswith(DECENTRALIZED_PREFIX):  # a per-node policy shared by all nodes (PettingZoo training)
        return load_decentralized_scheduler(text, env=env, seed=seed)
    if is_node_linear_spec(text):  # per-node linear weights (evolution strategies)
        return load_node_linear(text)
    if is_model_spec(text):
        return load_scheduler(text, env=env, seed=seed)
    if not is_heuristic_spec(text):
        raise UserError(f"unknown scheduler {text!r}: not a heuristic ({', '.join(HEURISTICS)}) and no "
                         "saved model at that path. Use a heuristic name, 'all', a shipped model ("
                        f"{', '.join(PRETRAINED)}), or the path of an SB3 .zip or a node-linear .npz")
    return build_heuristic(text, seed)
