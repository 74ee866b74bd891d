"""Rollout labels for a rule switch: what each rule would return from a state, measured on copies of the env.

From the states a base rule reaches on train scenarios, every rule k is played for ``hold`` rounds on a
copy of the env (``oracle.clone_env``) and the base rule after that, to the end of the episode; the copy's
return is Q(s, k). Every random draw comes from counter-based streams keyed by the episode and the round,
so all copies of one state replay the same future: Q(s, k) - Q(s, base) is the effect of the choice alone,
with common random numbers instead of PPO's sampled returns, whose round-to-round noise drowned it.

:func:`fit_switch` then fits the switch's logits to those differences from the fleet summary alone, which
is all the scheduler sees. Its argmax is one step of approximate policy iteration over the base rule:
rollout policy improvement (Bertsekas, "Rollout Algorithms for Discrete Optimization: A Survey", 2013)
learned as cost-sensitive classification (Lagoudakis & Parr, "Reinforcement Learning as Classification:
Leveraging Modern Classifiers", ICML 2003). The copies know the hidden state (the true battery, who the
attackers are, the coming harvest) only through what each choice leads to; regressing on the observed
summary averages over what the scheduler cannot see.

Each copy also records the carbon it emits and whether it reaches the target: with
``measure="carbon_to_target"`` the fit ranks the rules by carbon until the target, as the benchmark does,
instead of by return (:meth:`RolloutLabels.values`).

With ``continuation="same_rule"`` each copy plays its rule to the end, so Q(s, k) is rule k's own value from
s, and the argmax is policy switching among the rules: with exact values it does at least as well as the
best of them from every state (Chang, Givan & Chong, "Parallel Rollout for Online Solution of Partially
Observable Markov Decision Processes", Discrete Event Dynamic Systems 14, 2004), which is the comparison the
benchmark makes, family by family.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields

import numpy as np
import torch

from greengossip.agents.rule_switching import check_switchable, fleet_summary, rule_actions, summary_size
from greengossip.envs.config import RewardWeights
from greengossip.training.oracle import clone_env
from greengossip.training.rollout import one_torch_thread
from greengossip.training.settings import Continuation, LabelMeasure, SuiteSettings
from greengossip.training.suite import SPLITS, load_family
from greengossip.training.suite_envs import suite_draw


@dataclass
class RolloutLabels:
    """Labelled states: ``summaries`` (S, D) as the switch sees them; for each rule k, from there to the end of
    the episode, ``returns`` (S, K) its return, ``carbon_g`` (S, K) the gCO2e it emits and ``shortfall``
    (S, K) how far its final accuracy falls short of the target, over the target (0 where it reaches the
    target); ``families`` (S,) the family each state's scenario was drawn from."""

    summaries: np.ndarray
    returns: np.ndarray
    carbon_g: np.ndarray
    shortfall: np.ndarray
    families: np.ndarray

    def values(self, measure: LabelMeasure = "return") -> np.ndarray:
        """(S, K) what each rule is worth from each state, higher is better. ``"return"``: the env's reward.
        ``"carbon_to_target"``: minus the carbon emitted until the target is reached, what the benchmark
        sums. A copy that misses the target ranks below every copy of its state that reaches it, and misses
        rank among themselves by shortfall, not by the carbon they saved by giving up: a miss costs twice
        the state's largest carbon plus its family's typical one (the mean over the family's states of
        their largest), times 1 + shortfall. The family's term keeps a miss costly from a state where every
        copy emits nothing more (a solar fleet on a sunny afternoon)."""
        if measure == "return":
            return self.returns
        largest = self.carbon_g.max(1)
        miss_cost = 2.0 * (largest + self.family_mean(largest))[:, None] * (1.0 + self.shortfall)
        return -np.where(self.shortfall > 0, miss_cost, self.carbon_g)

    def family_mean(self, values: np.ndarray) -> np.ndarray:
        """(S,) for each state, the mean of ``values`` ((S,) or (S, K)) over the states of its family."""
        means = np.zeros(len(self.families))
        for family in np.unique(self.families):
            rows = self.families == family
            means[rows] = values[rows].mean()
        return means

    def advantages(self, measure: LabelMeasure = "return") -> np.ndarray:
        """(S, K) each rule's value (:meth:`values`) minus the base rule's (column 0)."""
        values = self.values(measure)
        return values - values[:, :1]

    @staticmethod
    def join(parts: Sequence[RolloutLabels]) -> RolloutLabels:
        names = [field.name for field in fields(RolloutLabels)]
        return RolloutLabels(*(np.concatenate([getattr(part, name) for part in parts]) for name in names))


OUTCOMES = ("return", "carbon_g", "shortfall")  # the columns of rule_outcomes, in order


def _batched(observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: np.asarray(value)[None] for key, value in observation.items()}


def _shortfall(terminated: bool, info: dict) -> float:
    """The episode's last step's shortfall: 0 on reaching the target, else the deadline component's."""
    return 0.0 if terminated else max(0.0, -float(info["reward_components"]["deadline"]))


def rule_outcomes(env, rules: Sequence, hold: int, continuation: Continuation = "first_rule",
                  first: int = 0) -> np.ndarray:
    """(K, 3): for each copy of ``env`` (in its current state) that plays ``rules[k]`` for ``hold`` rounds
    and then, to the end of the episode, ``rules[0]`` (``continuation="first_rule"``) or ``rules[k]`` itself
    (``"same_rule"``), its return, its gCO2e and its shortfall (columns as :data:`OUTCOMES`). Copies before
    ``first`` are not played (their rows are NaN)."""
    outcomes = np.full((len(rules), len(OUTCOMES)), np.nan)
    for k in range(first, len(rules)):
        copy = clone_env(env)
        observation = copy._observation()
        done, played, total, carbon = False, 0, 0.0, 0.0
        continued = k if continuation == "same_rule" else 0
        while not done:
            choice = k if played < hold else continued
            action = rule_actions(rules, _batched(observation), [choice])[0]
            observation, reward, terminated, truncated, info = copy.step(action)
            total += reward
            carbon += info["carbon_g"]
            played += 1
            done = terminated or truncated
        outcomes[k] = total, carbon, _shortfall(terminated, info)
    return outcomes


@dataclass(frozen=True)
class LabelJob:
    """One train scenario to label (picklable, for the worker processes)."""

    suite: SuiteSettings
    family: str
    seed: int
    rules: tuple[str, ...]  # the rule specs; the first is the base rule
    reward: RewardWeights | None  # the run's reward weights, in place of the family's
    hold: int  # rounds each copy plays its rule before the continuation
    every: int  # rounds between two labelled states
    max_nodes: int  # the fleet's cut
    rollin: str | None = None  # a saved rule switch, or None for the base rule
    continuation: Continuation = "first_rule"  # as in rule_outcomes


def label_scenario(job: LabelJob) -> RolloutLabels:
    """The labelled states of one train scenario. The roll-in (a saved rule switch, or None for the base
    rule, the first) plays the episode; every ``every`` rounds (from a round the
    seed picks, so the labelled rounds differ between scenarios) each rule's outcome is measured. Rolling in
    with the switch fitted so far labels the states that switch reaches itself, where labels from the base
    rule's states may not hold (DAgger: Ross, Gordon & Bagnell, AISTATS 2011).

    Rolled in with the base rule, the base rule's copy would replay the episode's own future (the base rule
    continues itself under either continuation, and every draw is keyed by episode and round), so it is not
    played: its outcome is the episode's own, summed from the labelled round on. That saves one copy in K."""
    from greengossip.agents.learned import make_scheduler
    from greengossip.envs.gossip_env import EdgeLearningEnv

    family, seed, hold, every = job.family, job.seed, job.hold, job.every
    rules = check_switchable(job.rules)
    with one_torch_thread():
        config = suite_draw(job.suite, family, seed, load_family(family)[1], job.reward, job.max_nodes)
        env = EdgeLearningEnv(config)
        player = rules[0] if job.rollin is None else make_scheduler(job.rollin)
        first = 1 if job.rollin is None else 0
        observation, _ = env.reset(seed=seed)
        offset = seed % every
        summaries, outcomes, labelled, rewards, carbon = [], [], [], [], []
        done, played, state = False, 0, None
        while not done:
            if played % every == offset:
                summaries.append(fleet_summary(observation))
                outcomes.append(rule_outcomes(env, rules, hold, job.continuation, first))
                labelled.append(played)
            action, state = player.predict(observation, state=state, episode_start=np.array([played == 0]))
            observation, step_reward, terminated, truncated, info = env.step(action)
            rewards.append(step_reward)
            carbon.append(info["carbon_g"])
            played += 1
            done = terminated or truncated
        env.close()
    count = len(summaries)
    table = np.asarray(outcomes, dtype=np.float64).reshape(count, len(rules), len(OUTCOMES))
    if first:
        # the episode's own tail from each labelled round: reversed cumulative sums
        table[:, 0, 0] = np.cumsum(rewards[::-1])[::-1][labelled]
        table[:, 0, 1] = np.cumsum(carbon[::-1])[::-1][labelled]
        table[:, 0, 2] = _shortfall(terminated, info)
    return RolloutLabels(np.asarray(summaries, dtype=np.float32).reshape(count, summary_size()),
                         table[..., 0], table[..., 1], table[..., 2], np.full(count, family, dtype=object))


def collect_labels(suite: SuiteSettings, rules: Sequence[str], reward: RewardWeights | None, *, seed: int,
                   scenarios_per_family: int, hold: int, every: int, max_nodes: int,
                   family_max_nodes: Mapping[str, int] | None = None, workers: int = 1, rollin: str | None = None,
                   continuation: Continuation = "first_rule") -> RolloutLabels:
    """Rollout labels on ``scenarios_per_family`` train seeds of every family of ``suite`` (picked with
    ``seed``), each at its own fleet size cut at ``family_max_nodes[family]`` where given, else at
    ``max_nodes``, over ``workers`` processes; ``rollin`` as in :func:`label_scenario`, ``continuation`` as
    in :func:`rule_outcomes`."""
    rng = np.random.default_rng(seed)
    train = SPLITS["train"]
    sizes = dict(family_max_nodes or {})
    jobs = [LabelJob(suite, family, int(draw), tuple(rules), reward, hold, every, sizes.get(family, max_nodes),
                     rollin, continuation)
            for family in suite.family_names
            for draw in rng.choice(np.arange(train.start, train.stop), scenarios_per_family, replace=False)]
    if workers == 1:
        parts = [label_scenario(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(label_scenario, jobs))
    return RolloutLabels.join(parts)


def fit_switch(model, labels: RolloutLabels, *, epochs: int, learning_rate: float, batch_size: int,
               seed: int, measure: LabelMeasure = "return") -> dict[str, float]:
    """Fits the actor of a rule-switch PPO ``model`` so that its logits are each rule's advantage over the
    base rule on ``measure`` (``labels.advantages(measure)``), scaled per family by that family's mean
    absolute advantage, so every family weighs the same whatever its scale. The deterministic switch then
    plays the rule with the largest predicted advantage. Returns the share of labelled states on which it
    picks a rule whose advantage is the best one's (``agreement``) and the mean advantage it realises
    (``gain``)."""
    advantages = labels.advantages(measure)
    scale = np.maximum(labels.family_mean(np.abs(advantages)), 1e-9)
    targets = torch.as_tensor(advantages / scale[:, None], dtype=torch.float32)
    inputs = torch.as_tensor(labels.summaries, dtype=torch.float32)
    policy = model.policy
    parameters = [*policy.mlp_extractor.policy_net.parameters(), *policy.action_net.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)

    def logits(summaries: torch.Tensor) -> torch.Tensor:
        # the actor's raw logits: the distribution's own are shifted to log-probabilities, which would fit
        # the advantages only up to that shift
        return policy.action_net(policy.mlp_extractor.forward_actor(
            policy.extract_features(summaries, policy.pi_features_extractor)))

    policy.set_training_mode(True)
    for _ in range(epochs):
        for batch in torch.randperm(len(inputs), generator=generator).split(batch_size):
            loss = torch.nn.functional.mse_loss(logits(inputs[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    policy.set_training_mode(False)
    with torch.no_grad():
        chosen = logits(inputs).argmax(-1).numpy()
    realised = advantages[np.arange(len(chosen)), chosen]
    return {"agreement": float(np.mean(realised >= advantages.max(-1) - 1e-9)), "gain": float(realised.mean()),
            "best_gain": float(advantages.max(-1).mean()), "states": float(len(chosen))}
