"""Training and validation envs drawn from the scenario suite (``TrainSettings.suite``).

SB3 wants one observation space for all training envs. Either every draw is set to one fleet size
(``suite.fleet_sizes: fixed``, ``suite.n_nodes``), or each keeps the size its seed draws, cut at
``suite.max_nodes``, and its observation is padded with absent nodes to ``max_nodes``
(``fleet_sizes: drawn``; the node-set policy leaves absent nodes out of its pooled fleet context and
gives them no action). Draws are observed without the adjacency matrix: a policy without message passing
runs on every family's own configuration, including ``large_network``, whose 1,024-node observation
leaves the matrix out.

:class:`SuiteVecEnv` gives each env slot its own scenario (one ``EdgeLearningVectorEnv`` per slot, since a
batched program runs one scenario) and replaces it with a new train-split draw every ``redraw_every``
episodes. Building a scenario costs about 0.02-1.5 s (the continental grid reads hourly traces), against
about 1-2 s of stepping for one 32-node episode.
"""

from __future__ import annotations

import numpy as np

from greengossip.envs.config import EnvConfig, RewardWeights
from greengossip.envs.sb3_vec_env import GossipVecEnv
from greengossip.envs.vector_env import EdgeLearningVectorEnv
from greengossip.training.settings import SuiteSettings
from greengossip.training.suite import SPLITS, draw_scenario, load_family, resized


def suite_draw(suite: SuiteSettings, family: str, seed: int, ranges=None,
               reward: RewardWeights | None = None, max_nodes: int | None = None) -> EnvConfig:
    """The scenario ``seed`` draws from ``family`` at the fleet size ``suite`` trains on
    (``SuiteSettings.training_size``), or, with ``max_nodes``, at its own size cut at ``max_nodes``
    (:func:`own_size_draw`); with no adjacency observed (validated again: a fleet size can make a drawn
    scenario invalid, and the error then says so). ``reward`` (the run's ``settings.reward``), where given,
    replaces the family's reward weights."""
    if max_nodes is not None:
        return own_size_draw(family, seed, max_nodes, ranges, reward)
    config = _drawn(family, seed, ranges, reward)
    return resized(config, suite.training_size(config.n_nodes), adjacency=False)


def own_size_draw(family: str, seed: int, max_nodes: int, ranges=None,
                  reward: RewardWeights | None = None) -> EnvConfig:
    """:func:`suite_draw` at the family's own size cut at ``max_nodes``: no suite settings needed."""
    config = _drawn(family, seed, ranges, reward)
    return resized(config, min(config.n_nodes, max_nodes), adjacency=False)


def _drawn(family: str, seed: int, ranges, reward: RewardWeights | None) -> EnvConfig:
    config = draw_scenario(family, seed, ranges).config
    return config if reward is None else config.model_copy(update={"reward": reward})


class SuiteDrawer:
    """Draws (family, train seed) pairs for one env slot: a family uniformly, a seed uniformly from the train
    split; ``np.random.default_rng([seed, slot])``, so a run's sequence of scenarios is reproducible."""

    def __init__(self, suite: SuiteSettings, seed: int, slot: int, reward: RewardWeights | None = None):
        self.suite = suite
        self.reward = reward
        self.families = suite.family_names
        self.ranges = {name: load_family(name)[1] for name in self.families}
        self.rng = np.random.default_rng([int(seed), int(slot)])

    def next(self) -> tuple[str, int, EnvConfig]:
        family = self.families[int(self.rng.integers(len(self.families)))]
        train = SPLITS["train"]
        seed = int(self.rng.integers(train.start, train.stop))
        return family, seed, suite_draw(self.suite, family, seed, self.ranges[family], self.reward)


class SuiteVecEnv(GossipVecEnv):
    """``num_envs`` env slots, each on its own drawn scenario, redrawn every ``suite.redraw_every`` episodes.

    A slot's first episode, and each first episode after a redraw, is reset with the draw's seed (as the
    benchmark does); episodes in between go on with the slot's own generator. ``scenarios`` lists what each
    slot plays now as ``(family, seed)``; ``reward`` as in ``suite_draw``."""

    def __init__(self, num_envs: int, suite: SuiteSettings, seed: int = 0, reward: RewardWeights | None = None):
        self.suite = suite
        self.drawers = [SuiteDrawer(suite, seed, slot, reward) for slot in range(num_envs)]
        drawn = [drawer.next() for drawer in self.drawers]
        self.scenarios = [(family, draw_seed) for family, draw_seed, _ in drawn]
        super().__init__(num_envs, config=[config for *_, config in drawn], pad_to=suite.pad_to)
        self.episodes = np.zeros(num_envs, dtype=np.int64)

    def seed(self, seed: int | None = None):
        # the slots' draw seeds decide their resets; SB3's seed call must not replace them
        return [draw_seed for _, draw_seed in self.scenarios]

    def reset(self):
        obs = self._gather([venv.reset(seed=[draw_seed])[0]
                            for venv, (_, draw_seed) in zip(self.venvs, self.scenarios)])
        return obs

    def step_wait(self):
        obs, rewards, dones, infos = super().step_wait()
        for slot in np.flatnonzero(dones):
            self.episodes[slot] += 1
            if self.episodes[slot] % self.suite.redraw_every:
                continue
            family, draw_seed, config = self.drawers[slot].next()
            self.venvs[slot].close()
            self.venvs[slot] = EdgeLearningVectorEnv(num_envs=1, config=config)
            self.scenarios[slot] = (family, draw_seed)
            first, _ = self.venvs[slot].reset(seed=[draw_seed])
            for key, value in self._padded(first).items():
                obs[key][slot] = value[0]
            infos[slot]["scenario"] = f"{family}:{draw_seed}"
        return obs, rewards, dones, infos


def suite_validation_envs(suite: SuiteSettings, seeds: list[int], reward: RewardWeights | None = None,
                          max_nodes: int | None = None) -> dict[str, GossipVecEnv]:
    """One batched validation env per family: environment i plays the scenario ``seeds[i]`` (a validation
    seed) draws, reset with that seed, at the fleet size training gives it, or with ``max_nodes`` at its own
    size cut at ``max_nodes`` (observations then padded to the family's largest: only a policy that reads
    them through a size-free summary, as the rule switch does, can play them); ``reward`` as in
    ``suite_draw``."""
    envs = {}
    for family in suite.family_names:
        ranges = load_family(family)[1]
        configs = [suite_draw(suite, family, seed, ranges, reward, max_nodes) for seed in seeds]
        pad_to = suite.pad_to if max_nodes is None else max(config.n_nodes for config in configs)
        env = GossipVecEnv(len(seeds), config=configs, pad_to=pad_to)
        env.seed(seeds[0])
        env.reset()
        envs[family] = env
    return envs
