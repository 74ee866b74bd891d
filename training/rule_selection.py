"""Demonstrations of the rule that did best on each training scenario, for the gated residual policy.

A policy with several prior rules (``agents/policies.py``, ``prior: [...]``) has a fleet-level gate that
chooses among them. Which rule suits a fleet is learned from rollouts: on each of a number of scenarios
drawn from the suite's train split (seeds 0..9,999), at the family's own fleet size, every rule plays the
episode to the end, and the trajectory of the best one (the target met first, then the least
carbon-to-target: ``training.oracle.outcome_key``) becomes the demonstration that
``training.imitation.fit`` clones. This is imitation of a rollout teacher that picks, per scenario, one of
the rules the policy can follow (the policy-improvement step of approximate policy iteration over the
rules: Bertsekas & Tsitsiklis, "Neuro-Dynamic Programming", 1996, ch. 6). The teacher sees the outcomes
of whole episodes; the policy sees only the observations on the way, so what it learns is which
observed fleets a rule suits.

Validation, test and ood seeds are never drawn here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from greengossip.training.imitation import Demonstrations, ImitationSummary, discounted_returns, warm_start
from greengossip.training.rollout import one_torch_thread
from greengossip.training.settings import ImitationSettings, SuiteSettings
from greengossip.training.suite import SPLITS, load_family
from greengossip.training.suite_envs import own_size_draw

LOG = logging.getLogger("greengossip.train.imitation")
SELECT_BY = ("scenario", "family", "oracle")
ORACLE = "oracle"


@dataclass(frozen=True)
class Trajectory:
    """One rule's episode on one scenario: what the policy would have seen and done, and how it ended."""

    family: str
    seed: int
    rule: str
    observations: dict[str, np.ndarray]  # key -> (T, ...)
    action_masks: np.ndarray  # (T, N * K)
    actions: np.ndarray  # (T, N)
    rewards: np.ndarray  # (T,)
    key: tuple[float, float, float]  # training.oracle.outcome_key: smaller is better
    carbon_to_target_g: float | None


def draw_training_scenarios(suite: SuiteSettings, per_family: int, seed: int) -> list[tuple[str, int]]:
    """``per_family`` distinct train-split seeds for each of the suite's families, from ``seed``."""
    rng = np.random.default_rng([int(seed), 7])
    train = SPLITS["train"]
    drawn = []
    for family in suite.family_names:
        seeds = rng.choice(np.arange(train.start, train.stop), size=per_family, replace=False)
        drawn += [(family, int(value)) for value in seeds]
    return drawn


def play_rule(job: tuple) -> Trajectory:
    """Play rule ``job[2]`` on the scenario train seed ``job[1]`` draws from family ``job[0]``, at the family's
    own size capped at ``job[3]`` nodes, without the adjacency matrix (as the suite policy is trained).
    ``job[2]`` may be :data:`ORACLE`: the clairvoyant scheduler (``training/oracle.py``) over the family's
    base rules under both views and ``job[4:]`` as observed; its actions are recorded beside the observation
    the policy would see, not the truth the oracle plans on."""
    from greengossip.agents.heuristics import build_heuristic
    from greengossip.envs.gossip_env import EdgeLearningEnv
    from greengossip.training.oracle import OracleScheduler, base_policies, outcome_key

    family, seed, rule, max_nodes, *extra_rules = job
    with one_torch_thread():
        ranges = load_family(family)[1]
        config = own_size_draw(family, seed, max_nodes, ranges)
        env = EdgeLearningEnv(config)
        if rule == ORACLE:
            policies = [*base_policies(ranges.oracle.rules, ranges.oracle.views),
                        *base_policies(extra_rules, ("observed",))]
            scheduler = OracleScheduler(env, list(dict.fromkeys(policies)), every=ranges.oracle.every,
                                        width=ranges.oracle.width)
        else:
            scheduler = build_heuristic(rule, seed=0)
        obs, _ = env.reset(seed=seed)
        observations, masks, actions, rewards = [], [], [], []
        done, first, info = False, True, {}
        while not done:
            observations.append({key: np.array(value) for key, value in obs.items()})
            masks.append(np.asarray(env.unwrapped.action_masks()).reshape(-1))
            action, _ = scheduler.predict(obs, episode_start=np.array([first]), deterministic=True)
            first = False
            action = np.asarray(action, dtype=np.int64).reshape(-1)
            obs, reward, terminated, truncated, info = env.step(action)
            actions.append(action)
            rewards.append(float(reward))
            done = terminated or truncated
        env.close()
    reached = info.get("rounds_to_target") is not None
    key = outcome_key(reached, info.get("carbon_to_target_g") or 0.0, info.get("final_accuracy") or 0.0,
                      info.get("episode_carbon_g") or 0.0)
    return Trajectory(family, seed, rule, {key_: np.stack([o[key_] for o in observations]) for key_ in observations[0]},
                      np.stack(masks), np.stack(actions), np.asarray(rewards, dtype=np.float32), key,
                      info.get("carbon_to_target_g"))


def best_trajectories(trajectories: Sequence[Trajectory]) -> list[Trajectory]:
    """The best rule's trajectory on each scenario (ties: the rule listed first)."""
    best: dict[tuple[str, int], Trajectory] = {}
    for trajectory in trajectories:
        scenario = (trajectory.family, trajectory.seed)
        if scenario not in best or trajectory.key < best[scenario].key:
            best[scenario] = trajectory
    return list(best.values())


def family_best_trajectories(trajectories: Sequence[Trajectory]) -> list[Trajectory]:
    """On every scenario, the trajectory of its family's best rule over all the family's scenarios: the most
    targets met, then the least mean carbon-to-target relative to each scenario's cleanest rule that met it
    (relative, so that a large fleet's grams do not outweigh a small one's)."""
    by_scenario: dict[tuple[str, int], dict[str, Trajectory]] = {}
    for trajectory in trajectories:
        by_scenario.setdefault((trajectory.family, trajectory.seed), {})[trajectory.rule] = trajectory
    scores: dict[str, dict[str, list[float]]] = {}  # family -> rule -> [targets missed, summed relative carbon]
    for (family, _seed), played in by_scenario.items():
        met = [t.carbon_to_target_g for t in played.values() if t.key[0] == 0.0 and t.carbon_to_target_g]
        cleanest = min(met) if met else None
        for rule, trajectory in played.items():
            score = scores.setdefault(family, {}).setdefault(rule, [0.0, 0.0])
            if trajectory.key[0] == 0.0 and cleanest:
                score[1] += trajectory.carbon_to_target_g / cleanest
            else:
                score[0] += 1.0
    best_rule = {family: min(rules, key=lambda rule: tuple(rules[rule])) for family, rules in scores.items()}
    return [played[best_rule[family]] for (family, _seed), played in by_scenario.items()]


def as_demonstrations(trajectory: Trajectory, gamma: float) -> Demonstrations:
    """A whole episode as demonstrations: every return is exact (the episode ended)."""
    dones = np.zeros(len(trajectory.rewards), dtype=bool)
    dones[-1] = True
    returns, complete = discounted_returns(trajectory.rewards[:, None], dones[:, None], gamma)
    return Demonstrations(trajectory.rule, trajectory.observations, trajectory.action_masks.astype(np.float32),
                          trajectory.actions, returns[:, 0], complete[:, 0])


def selected_demonstrations(suite: SuiteSettings, rules: Sequence[str], per_family: int, max_nodes: int,
                            gamma: float, seed: int = 0, workers: int = 1, select_by: str = "scenario"
                            ) -> tuple[list[Demonstrations], dict]:
    """Demonstrations of the best of ``rules`` on ``per_family`` train scenarios of every family (one
    ``Demonstrations`` per scenario: fleet sizes differ), and a summary: how often each rule was chosen.
    ``select_by``: the best rule of each scenario, the best rule of each family over its scenarios, or the
    oracle's plan over the family's base rules and ``rules`` (one oracle episode per scenario)."""
    if select_by not in SELECT_BY:
        raise ValueError(f"select_by must be one of {', '.join(SELECT_BY)}, got {select_by!r}")
    scenarios = draw_training_scenarios(suite, per_family, seed)
    if select_by == ORACLE:
        jobs = [(family, draw_seed, ORACLE, max_nodes, *rules) for family, draw_seed in scenarios]
    else:
        jobs = [(family, draw_seed, rule, max_nodes) for family, draw_seed in scenarios for rule in rules]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            trajectories = list(pool.map(play_rule, jobs))
    else:
        trajectories = [play_rule(job) for job in jobs]
    if select_by == ORACLE:
        chosen = trajectories
    elif select_by == "scenario":
        chosen = best_trajectories(trajectories)
    else:
        chosen = family_best_trajectories(trajectories)
    counts: dict[str, dict[str, int]] = {}
    for trajectory in chosen:
        family_counts = counts.setdefault(trajectory.family, {})
        family_counts[trajectory.rule] = family_counts.get(trajectory.rule, 0) + 1
    LOG.info("rule selection on %d train scenarios (%d rollouts): %s", len(chosen), len(trajectories), counts)
    return [as_demonstrations(trajectory, gamma) for trajectory in chosen], counts


def warm_start_from_rules(model, settings: ImitationSettings, suite: SuiteSettings, seed: int = 0
                          ) -> ImitationSummary:
    """The warm start of ``imitation.select_from``: the episodes ``imitation.select_by`` picks on train
    scenarios of ``suite`` (the best rules', or the oracle's), imitated by ``model``
    (``training.imitation.warm_start``)."""
    demonstrations, _counts = selected_demonstrations(
        suite, settings.select_from, settings.scenarios_per_family, settings.max_nodes, model.gamma, seed,
        settings.workers, settings.select_by)
    return warm_start(model, settings, seed, demonstrations)
