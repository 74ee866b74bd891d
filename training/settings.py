"""Training settings: a typed, validated model loaded from YAML (``configs/train/default.yaml``).

The env scenario is *not* here (that is an ``EnvConfig``, ``--config``); this is everything about how
the scheduler is trained: algorithm, hyperparameters per algorithm, policy size, seeds, evaluation,
checkpoints, logging. Every field carries its meaning in ``description``; ``TrainSettings.markdown()``
renders them for TensorBoard's text tab. Like the env config, a misspelt key is an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from greengossip.agents.heuristics import HEURISTICS, memoryless_rules
from greengossip.envs.config import RewardWeights
from greengossip.envs.errors import bounded_repr
from greengossip.envs.safe_yaml import YAMLInputError, load_yaml_file
from greengossip.envs.shipped import TRAINING, find_config, shipped_dir, shipped_names

DEFAULT_CONFIG = "default"  # the env scenario trained on when --config is not given
DEFAULT_SETTINGS = shipped_dir(TRAINING) / "default.yaml"
FIRST_VALIDATION_SEED = 10_000  # held-out seeds of the evaluation callback (best-model selection)
FIRST_TEST_SEED = 20_000  # held-out seeds of the final comparison with the heuristics

Algorithm = Literal["maskable_ppo", "ppo", "a2c", "recurrent_ppo"]
Continuation = Literal["first_rule", "same_rule"]  # what a rollout-label copy plays after its rule's hold
LabelMeasure = Literal["return", "carbon_to_target"]  # what a rollout label ranks the rules by
ALGORITHMS: tuple[str, ...] = Algorithm.__args__  # agents.policies.ALGORITHMS, as a type for validation


class SettingsError(ValueError):
    """A training setting is missing, misspelt or out of range; the message says which and how to fix it."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # NaN/inf never train


class PPOSettings(_Frozen):
    """PPO / MaskablePPO hyperparameters (SB3 names; Schulman et al. 2017)."""

    learning_rate: float = Field(3e-4, gt=0, description="Adam step size")
    learning_rate_final: float | None = Field(
        None,
        gt=0,
        description="if set, the step size falls linearly from learning_rate to this over total_timesteps "
        "(a schedule on env steps, so the same seed still gives the same curve)",
    )
    learning_rate_decay_start: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="with learning_rate_final: the share of total_timesteps for which the step size stays at "
        "learning_rate before it starts to fall (0: it falls from the first step)",
    )
    n_steps: int = Field(256, ge=2, description="rollout length per env before each update")
    batch_size: int = Field(64, ge=2, description="minibatch size of the PPO epochs")
    n_epochs: int = Field(5, ge=1, description="passes over each rollout")
    gamma: float = Field(0.99, gt=0, le=1, description="discount factor")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE bias-variance trade-off")
    clip_range: float = Field(0.2, gt=0, description="PPO ratio clipping")
    ent_coef: float = Field(0.0, ge=0, description="entropy bonus (summed over nodes, so keep it small)")
    vf_coef: float = Field(0.5, ge=0, description="value-loss weight")
    max_grad_norm: float = Field(0.5, gt=0, description="gradient clipping")
    target_kl: float | None = Field(None, gt=0, description="stop an update's epochs early above this KL")
    normalize_advantage: bool = Field(True, description="standardise advantages per minibatch")
    ratio: Literal["joint", "per_node"] = Field(
        "joint", description="the clipped probability ratio: one per fleet (PPO), or one per node with the "
        "fleet's advantage (maskable_ppo only; agents/node_ratio_ppo.py)")

    @model_validator(mode="after")
    def _decay_needs_a_final_rate(self):
        if self.learning_rate_decay_start > 0 and self.learning_rate_final is None:
            raise ValueError("learning_rate_decay_start only delays the fall to learning_rate_final: set "
                             "learning_rate_final too, or leave learning_rate_decay_start at 0")
        return self


class RecurrentPPOSettings(PPOSettings):
    """RecurrentPPO hyperparameters: PPO's plus the LSTM over the pooled fleet context."""

    lstm_hidden_size: int = Field(64, ge=1, description="LSTM width (independent of the number of nodes)")
    enable_critic_lstm: bool = Field(True, description="give the critic its own LSTM")


class A2CSettings(_Frozen):
    """A2C hyperparameters (SB3 names; Mnih et al. 2016)."""

    learning_rate: float = Field(7e-4, gt=0, description="optimiser step size")
    n_steps: int = Field(16, ge=1, description="rollout length per env before each update")
    gamma: float = Field(0.99, gt=0, le=1, description="discount factor")
    gae_lambda: float = Field(1.0, ge=0, le=1, description="GAE lambda (1 = plain n-step returns)")
    ent_coef: float = Field(0.0, ge=0, description="entropy bonus")
    vf_coef: float = Field(0.5, ge=0, description="value-loss weight")
    max_grad_norm: float = Field(0.5, gt=0, description="gradient clipping")
    use_rms_prop: bool = Field(True, description="RMSprop (SB3's default for A2C) instead of Adam")
    normalize_advantage: bool = Field(False, description="standardise advantages")


class PolicySettings(_Frozen):
    """Size of the node-set policy (agents/policies.py); nothing here depends on the number of nodes."""

    hidden: int = Field(64, ge=4, description="width of the per-node embedding")
    encoder_layers: int = Field(2, ge=1, description="layers of the per-node encoder MLP")
    message_passing: int = Field(
        1, ge=0, description="rounds of mean aggregation over the graph (0 = pure DeepSets)"
    )
    pi: list[int] = Field([64], description="hidden layers of the per-node actor head")
    vf: list[int] = Field([64], description="hidden layers of the critic head")
    activation: Literal["relu", "tanh"] = Field("relu", description="activation of every hidden layer")
    mask_logits: bool = Field(True, description="mask infeasible actions inside the network (all algorithms)")
    ortho_init: bool = Field(True, description="orthogonal initialisation with SB3's gains")
    prior: str | list[str] | None = Field(
        None,
        description="memoryless heuristic the policy starts from and learns corrections to (residual policy; "
        "parameters as name:key=value, e.g. carbon_periodic:period=6; None = learn from scratch), or a list "
        "of them that a learned fleet-level gate chooses among",
    )
    prior_weight: float = Field(3.0, gt=0, description="extra logit of the prior rule's action per node")
    prior_regulariser: Literal["entropy", "kl", "cross_entropy"] = Field(
        "entropy",
        description="what ent_coef weighs: the entropy (PPO's bonus), or with a prior the KL divergence to the "
        "prior rule's distribution (kl) or the cross-entropy to the rule's action (cross_entropy)",
    )
    allowed_actions: list[int] | None = Field(
        None, description="action codes the policy may choose (must include 0, idle); None = all"
    )
    gate: Literal["soft", "hard"] = Field(
        "soft", description="with several prior rules: soft = each node's prior is the gate-weighted mixture of "
        "the rules' actions; hard = the whole fleet follows the rule the gate rates highest"
    )

    @model_validator(mode="after")
    def _regulariser_needs_a_prior(self) -> PolicySettings:
        if self.prior_regulariser != "entropy" and self.prior is None:
            raise ValueError(f"prior_regulariser: {self.prior_regulariser} needs a prior (policy.prior or --prior); "
                             "set prior_regulariser: entropy")
        return self

    @field_validator("prior")
    @classmethod
    def _memoryless_heuristic(cls, prior: str | list[str] | None) -> str | list[str] | None:
        memoryless_rules(prior)
        return prior


def check_family_names(names: Iterable[str]) -> None:
    """A ValueError naming every name that is not a shipped suite family, and the allowed ones."""
    known = shipped_names("suite")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown families {unknown}; allowed: {', '.join(known)}")


class RolloutLabelSettings(_Frozen):
    """Rollout labels for a rule switch before PPO (``training/rule_rollouts.py``): on train scenarios of
    every suite family the first rule plays the episode, every ``every`` rounds each rule is played on a copy
    of the env for ``hold`` rounds (then the first rule or the same one, to the end: ``continuation``), and the
    switch's logits are fitted to each rule's value (``measure``) over the first rule's."""

    scenarios_per_family: int = Field(12, ge=1, description="train scenarios of every family that are labelled")
    every: int = Field(6, ge=1, description="rounds between two labelled states of one episode")
    continuation: Continuation = Field(
        "first_rule", description="what each copy plays after the rule's hold rounds, to the end of the episode: "
        "the first rule (one step of policy improvement over it) or the same rule (each rule's own value from "
        "the state: policy switching among the rules)")
    measure: LabelMeasure = Field(
        "return", description="what the fit ranks the rules by: the env's return, or the carbon each copy emits "
        "until it reaches the target, as the benchmark sums it (a copy that misses the target ranks below every "
        "copy that reaches it)")
    max_nodes: int = Field(64, ge=2, description="largest fleet labelled (larger draws are cut to this)")
    family_max_nodes: dict[str, Annotated[int, Field(ge=2)]] = Field(
        {}, description="largest fleet labelled in each named family, in place of max_nodes: a family whose "
        "structure changes with its size (the large network's regions and gateways) is labelled at the sizes "
        "the benchmark plays")
    workers: int = Field(1, ge=1, description="processes playing the scenarios")
    iterations: int = Field(
        1, ge=1, description="batches of labels, each on other train scenarios: the first "
        "batches_from_first_rule roll in with the first rule, each later one with the switch fitted to all "
        "labels so far; the switch is fitted afresh to all labels after each of those and at the end")
    batches_from_first_rule: int = Field(
        1, ge=1, description="batches labelled from the first rule's states before the switch is first fitted")
    epochs: int = Field(200, ge=1, description="passes over the labelled states")
    learning_rate: float = Field(1e-3, gt=0, description="Adam step size of the fit")
    batch_size: int = Field(64, ge=1, description="minibatch size of the fit")

    @field_validator("family_max_nodes")
    @classmethod
    def _shipped_families(cls, sizes: dict[str, int]) -> dict[str, int]:
        check_family_names(sizes)
        return sizes


class RuleSwitchSettings(_Frozen):
    """A fleet-level rule switch in place of the node-set policy (``agents/rule_switching.py``): every round
    PPO (the ``ppo`` section) picks one of ``rules``, and that rule decides every node."""

    rules: list[str] = Field(
        min_length=2,
        description="memoryless rules to switch among (name or name:key=value); the first one is what the "
        "untrained switch follows, and the final comparison plays it beside the model",
    )
    first_rule_bias: float = Field(
        2.0, ge=0, description="added to the first rule's logit at the start (0 = every rule equally likely)")
    net_arch: list[int] = Field([64, 64], description="hidden layers of the actor and of the critic")
    hold: int = Field(
        1, ge=1, description="rounds each choice is kept: the switch chooses at an episode's first round and every "
        "hold rounds after")
    guard: float | None = Field(
        None, ge=0.0, le=1.0, description="share of the rounds to the deadline after which the first rule plays "
        "until the target is reached, whatever the switch chooses (a deadline guard: the labels measure one "
        "choice followed by the first rule, not a run of choices); None = no guard")
    rollout_labels: RolloutLabelSettings | None = Field(
        None, description="fit the switch to rollout labels before PPO (training/rule_rollouts.py); None = start "
        "from first_rule_bias alone")
    validation_sizes: Literal["training", "own"] = Field(
        "training",
        description="fleet size of the validation draws: training = suite's training size (n_nodes or the drawn "
        "size cut at max_nodes); own = the size each validation seed draws, cut at suite.max_eval_nodes, as "
        "the benchmark plays them (the summary has no weight that depends on N)",
    )

    @field_validator("rules")
    @classmethod
    def _memoryless_rules(cls, rules: list[str]) -> list[str]:
        memoryless_rules(rules)
        return rules


class ImitationSettings(_Frozen):
    """Behaviour-cloning warm start before PPO (training/imitation.py): the policy first imitates a
    heuristic's rollouts on the training envs (actor: cross-entropy on its actions, critic: regression
    on the discounted returns observed). Off unless ``heuristic`` names one."""

    heuristic: str | None = Field(
        None, description="heuristic to imitate before PPO (agents/heuristics.py; None = no warm start)"
    )
    steps: int = Field(
        4096, ge=1, description="env steps of heuristic rollouts over all envs (not counted in total_timesteps)"
    )
    epochs: int = Field(10, ge=1, description="passes over the rollouts")
    batch_size: int = Field(64, ge=1, description="minibatch size")
    learning_rate: float = Field(3e-3, gt=0, description="Adam step size of the warm start")
    value_coef: float = Field(0.5, ge=0, description="weight of the critic's regression loss")
    entropy_coef: float = Field(
        0.3, ge=0, description="entropy bonus per node action: keeps the fitted policy stochastic for PPO to explore"
    )
    select_from: list[str] | None = Field(
        None,
        description="rules (memoryless heuristics) to choose among by rollouts: on scenarios_per_family train "
        "scenarios of every suite family each plays the episode, and the best one's episode is imitated "
        "(training/rule_selection.py; needs suite; instead of heuristic)",
    )
    scenarios_per_family: int = Field(8, ge=1, description="train scenarios per family for select_from")
    max_nodes: int = Field(256, ge=4, description="largest fleet the select_from rollouts play (larger draws are cut)")
    workers: int = Field(1, ge=1, description="processes for the select_from rollouts")
    select_by: Literal["scenario", "family", "oracle"] = Field(
        "scenario", description="select_from imitates the best rule of each scenario, the best rule of each "
        "family over its scenarios (most targets met, then the least carbon-to-target relative to each "
        "scenario's cleanest rule), or the oracle's plan (training/oracle.py: the family's base rules under "
        "both views and the select_from rules, switched between with foresight)")

    @field_validator("select_from")
    @classmethod
    def _memoryless_rules(cls, rules: list[str] | None) -> list[str] | None:
        memoryless_rules(rules)
        return rules

    @model_validator(mode="after")
    def _one_teacher(self) -> ImitationSettings:
        if self.select_from and self.heuristic is not None:
            raise ValueError("set heuristic (imitate one rule) or select_from (imitate the best of several), "
                             "not both")
        return self

    @property
    def enabled(self) -> bool:
        return self.heuristic is not None or bool(self.select_from)

    @field_validator("heuristic")
    @classmethod
    def _known_heuristic(cls, name: str | None) -> str | None:
        if name is not None:
            if name not in HEURISTICS:
                raise ValueError(f"unknown heuristic {name!r}; allowed: {list(HEURISTICS)}")
        return name


class SuiteSettings(_Frozen):
    """Domain randomisation over the scenario suite (``training/suite.py``): every training episode plays a
    scenario that a seed of the train split (0..9,999) draws from a family, and the best model is picked on
    scenarios of the validation split (10,000..); test and ood seeds are never drawn.

    The decentralized trainer (``training/suite_multi_agent.py``) runs family ``i mod k`` in training env
    ``i`` at fleet sizes up to ``max_nodes``; the centralized one (``training/suite_envs.py``) gives every
    env slot a family picked at random, redrawn every ``redraw_every`` episodes, at ``n_nodes`` nodes or
    (``fleet_sizes: drawn``) at the size its seed draws, cut at ``max_nodes``."""

    families: list[str] = Field(
        [], description="suite families trained on (names in configs/suite/; empty = every family)"
    )
    max_nodes: int = Field(
        64,
        ge=2,
        description="largest fleet of a training env (large_network draws up to 1,024 nodes). Decentralized: each "
        "env's fleet size is spread over its family's training range cut at this; centralized with fleet_sizes: "
        "drawn: each draw keeps its own size cut at this, and observations are padded to it",
    )
    eval_seeds_per_family: int = Field(
        2, ge=1, description="(decentralized) validation seeds per family of each evaluation"
    )
    max_eval_nodes: int = Field(
        256, ge=2, description="(decentralized, and a rule switch validated at its own sizes) largest fleet of a "
        "validation scenario (larger draws are cut to this)"
    )
    n_nodes: int = Field(
        32,
        ge=2,
        le=4096,
        description="(centralized, fleet_sizes: fixed) fleet size every draw is set to: SB3 needs one observation "
        "space for all training envs. The node-set policy has no weight that depends on N, so it still runs at each "
        "family's own size",
    )
    fleet_sizes: Literal["fixed", "drawn"] = Field(
        "fixed",
        description="(centralized) fixed: every draw is set to n_nodes nodes; drawn: every draw keeps the fleet size "
        "its seed draws, cut at max_nodes, so training varies N as well, and each env's observation is padded "
        "with absent nodes (no features, no allowed action) to max_nodes nodes, the one observation space SB3 "
        "needs",
    )
    redraw_every: int = Field(
        1, ge=1, description="(centralized) episodes an env slot plays on one drawn scenario before it draws the next"
    )

    @field_validator("families")
    @classmethod
    def _shipped_families(cls, families: list[str]) -> list[str]:
        check_family_names(families)
        if len(set(families)) < len(families):
            raise ValueError(f"families {families} lists a family twice; name each once")
        return families

    @property
    def family_names(self) -> list[str]:
        """The families drawn from (every shipped one when ``families`` is empty)."""
        return list(self.families) or shipped_names("suite")

    @property
    def pad_to(self) -> int | None:
        """(centralized) the fleet size observations are padded to; None when every draw has ``n_nodes``."""
        return self.max_nodes if self.fleet_sizes == "drawn" else None

    def training_size(self, drawn_nodes: int) -> int:
        """(centralized) the fleet size of a training or validation draw whose seed drew ``drawn_nodes``."""
        return self.n_nodes if self.fleet_sizes == "fixed" else min(int(drawn_nodes), self.max_nodes)


class TrainSettings(_Frozen):
    """How a scheduler is trained. Command-line flags override ``algo``, ``total_timesteps``, ``seed``,
    ``n_envs``, ``time_limit_minutes`` and ``imitation.heuristic``."""

    algo: Algorithm = Field("maskable_ppo", description="learning algorithm")
    total_timesteps: int = Field(200_000, ge=1, description="env steps (rounds) summed over all envs")
    seed: int = Field(
        0,
        ge=0,
        lt=FIRST_VALIDATION_SEED,
        description="seeds the networks, SB3 and training env i with seed + i; below 10,000 so "
        "training never meets the held-out seeds",
    )
    n_envs: int = Field(2, ge=1, description="training envs, stepped as one batched tensor program in the learner's "
                        "process (envs.sb3_vec_env.GossipVecEnv)")
    also_train_on: list[str] = Field(
        [],
        description="further env scenario YAMLs trained on alongside --config (training env i runs scenario "
        "i mod (1 + len), so n_envs should be a multiple of that); same n_nodes as --config. A file listed "
        "twice runs in more of the envs (validated once). Model selection stays on --config unless "
        "select_on is training_mix; the final comparison stays on it",
    )
    suite: SuiteSettings | None = Field(
        None,
        description="train on the scenario suite's train split (domain randomisation over families, fleet "
        "mix, regions and season) instead of --config; None = --config alone",
    )
    carbon_guard: float | None = Field(
        None,
        gt=0,
        description="if set, a validation can only become the best model when the --config scenario's mean "
        "episode carbon is at most this multiple of the first validation's (a residual policy's prior rule) "
        "and it reaches the target at least as often; None: the mean return alone decides",
    )
    keep_targets: bool = Field(
        False,
        description="if true, a validation can only become the best model when every validated scenario (each "
        "suite family) reaches the target at least as often as in the first validation (with eval_at_start, "
        "the untrained model: a residual policy's prior rule, a rule switch's first rule)",
    )
    select_on: Literal["config", "training_mix"] = Field(
        "config",
        description="scenarios the best model is picked on: config = --config alone; training_mix = "
        "--config and every also_train_on scenario, each on the validation seeds, scored by the mean "
        "return over all their episodes (--config alone when nothing is mixed in)",
    )
    torch_threads: int = Field(
        1,
        ge=1,
        description="torch CPU threads of the learner (1 = reproducible)",
    )
    device: str = Field("cpu", description="torch device of the policy")
    policy: PolicySettings = PolicySettings()
    rule_switch: RuleSwitchSettings | None = Field(
        None, description="train a fleet-level rule switch (agents/rule_switching.py) instead of the node-set "
        "policy; needs algo ppo and suite")
    reward: RewardWeights | None = Field(
        None,
        description="reward weights of the training and validation envs in place of the scenario's own "
        "(the training objective); the final comparison reports the scenario's KPIs either way",
    )
    maskable_ppo: PPOSettings = PPOSettings()
    ppo: PPOSettings = PPOSettings()
    a2c: A2CSettings = A2CSettings()
    recurrent_ppo: RecurrentPPOSettings = RecurrentPPOSettings()
    imitation: ImitationSettings = ImitationSettings()
    eval_freq: int = Field(10_000, ge=1, description="env steps between held-out evaluations")
    eval_at_start: bool = Field(
        False, description="also validate before training starts, so the untrained model (a residual policy's "
        "prior rule) can be the one kept when no later validation beats it"
    )
    eval_episodes: int = Field(
        5, ge=1, description="held-out validation seeds 10,000.. used by each evaluation"
    )
    test_episodes: int = Field(10, ge=1, description="held-out test seeds 20,000.. of the final comparison")
    checkpoint_freq: int = Field(25_000, ge=1, description="env steps between checkpoints")
    time_limit_minutes: float | None = Field(
        None,
        gt=0,
        description="stop training after this much wall-clock time (time-boxed benchmarks; None = "
        "run all total_timesteps)",
    )
    log_interval: int = Field(1, ge=1, description="updates between log dumps")
    progress_bar: bool = Field(True, description="show SB3's progress bar")
    compare: bool = Field(True, description="at the end, evaluate the best model against all heuristics")
    compare_workers: int = Field(1, ge=1, description="processes of the final comparison")
    track_carbon: bool = Field(True, description="measure the training run's own emissions with codecarbon")
    country_iso_code: str = Field(
        "DEU",
        min_length=3,
        max_length=3,
        description="where the training machine draws power (codecarbon, offline)",
    )

    @model_validator(mode="after")
    def _batch_fits(self, info: ValidationInfo) -> TrainSettings:
        # the decentralized trainer's rollout is n_steps x its envs' nodes (one step per node decision): it
        # checks the batch itself once it knows the fleet sizes (training/multi_agent.py)
        per_node = bool((info.context or {}).get("per_node"))
        for name in ("maskable_ppo", "ppo", "recurrent_ppo"):
            ppo: PPOSettings = getattr(self, name)
            if self.algo == name and not per_node and ppo.batch_size > ppo.n_steps * self.n_envs:
                raise ValueError(
                    f"{name}.batch_size ({ppo.batch_size}) is larger than a rollout (n_steps {ppo.n_steps} x "
                    f"n_envs {self.n_envs}); lower batch_size or raise n_steps"
                )
        for name in ("ppo", "recurrent_ppo"):
            if self.algo == name and getattr(self, name).ratio != "joint":
                raise ValueError(f"{name}.ratio: per_node is for maskable_ppo (the node-set policy's per-node "
                                 f"log-probabilities); allowed for {name}: joint")
        return self

    @model_validator(mode="after")
    def _suite_fits(self) -> TrainSettings:
        if self.imitation.select_from and self.suite is None:
            raise ValueError("imitation.select_from picks rules on the scenario suite's train split; set suite "
                             "(e.g. suite: {}) or imitate one rule with imitation.heuristic")
        if self.suite is not None:
            if self.also_train_on:
                raise ValueError("suite: the suite's families are the training scenarios; leave also_train_on "
                                 "empty")
            if self.algo == "recurrent_ppo":
                raise ValueError("suite: its validation runs every family's seeds as one batched program, which "
                                 "recurrent_ppo cannot use; pick maskable_ppo, ppo or a2c, or set suite: null")
        return self

    @model_validator(mode="after")
    def _rule_switch_fits(self) -> TrainSettings:
        if self.rule_switch is None:
            return self
        if self.algo != "ppo":
            raise ValueError(f"rule_switch: a choice of one rule per round needs no action mask; set algo: ppo "
                             f"(got {self.algo})")
        if self.suite is None:
            raise ValueError("rule_switch: trains on the scenario suite; set suite (e.g. suite: {})")
        if self.imitation.enabled:
            raise ValueError("rule_switch: the warm start fits the node-set policy; set imitation.heuristic and "
                             "imitation.select_from to null")
        return self

    @model_validator(mode="after")
    def _prior_regulariser_fits(self) -> TrainSettings:
        if self.policy.prior_regulariser != "entropy" and self.algo == "recurrent_ppo":
            raise ValueError("policy.prior_regulariser is for maskable_ppo, ppo and a2c; recurrent_ppo keeps the "
                             "entropy bonus (set prior_regulariser: entropy)")
        return self

    @model_validator(mode="after")
    def _imitation_fits(self) -> TrainSettings:
        if self.imitation.enabled and self.algo == "recurrent_ppo":
            raise ValueError(
                "imitation: the warm start fits feed-forward policies (maskable_ppo, ppo, a2c), not "
                "recurrent_ppo, whose LSTM would need whole sequences; set imitation.heuristic: null"
            )
        return self

    @property
    def hyperparameters(self) -> BaseModel:
        """The section of the chosen algorithm."""
        return getattr(self, self.algo)

    @property
    def ratio(self) -> str:
        """The chosen algorithm's clipped ratio (``PPOSettings.ratio``; joint for A2C, which has none)."""
        return getattr(self.hyperparameters, "ratio", "joint")

    @property
    def reference_rule(self) -> str | list[str] | None:
        """The rule a run starts from, played beside its model in the final comparison: the rule switch's
        first rule, else the residual policy's prior."""
        return self.rule_switch.rules[0] if self.rule_switch is not None else self.policy.prior

    @property
    def validation_seeds(self) -> list[int]:
        return list(range(FIRST_VALIDATION_SEED, FIRST_VALIDATION_SEED + self.eval_episodes))

    @property
    def test_seeds(self) -> list[int]:
        return list(range(FIRST_TEST_SEED, FIRST_TEST_SEED + self.test_episodes))

    def markdown(self) -> str:
        """The settings that matter for this run as a Markdown table (TensorBoard text)."""
        rows = ["| setting | value | meaning |", "|---|---|---|"]

        def add(prefix: str, model: BaseModel) -> None:
            for name, field in type(model).model_fields.items():
                value = getattr(model, name)
                if isinstance(value, BaseModel):
                    if name in ALGORITHMS and name != self.algo:
                        continue
                    add(f"{prefix}{name}.", value)
                else:
                    rows.append(f"| {prefix}{name} | {value} | {field.description or ''} |")

        add("", self)
        return "\n".join(rows)


def settings_for_config(config: str | Path | None) -> Path | None:
    """The default settings file for an env config: ``configs/train/<config stem>.yaml`` when there is
    one (e.g. ``tiny.yaml`` for ``configs/tiny.yaml``: small rollouts for quick runs), else
    ``configs/train/default.yaml`` (None if neither exists)."""
    if config is not None:
        specific = shipped_dir(TRAINING) / f"{Path(config).stem}.yaml"
        if specific.is_file():
            return specific
    return DEFAULT_SETTINGS if DEFAULT_SETTINGS.is_file() else None


def _read_settings_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """One settings file as a mapping. ``extends: other.yaml`` (relative to the file) starts from that
    file's settings, key by key at every depth: a variant names only what it changes."""
    if path.resolve() in seen:
        raise SettingsError(f"training settings file {path} extends itself (through {' -> '.join(map(str, seen))})")
    if not path.exists():
        raise SettingsError(f"training settings file not found: {path} (see configs/train/default.yaml)")
    try:
        data = load_yaml_file(path)
    except YAMLInputError as exc:
        raise SettingsError(f"training settings: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"training settings ({path}) must be a mapping, got {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise SettingsError(f"training settings ({path}): extends must be a file name, got {parent!r}")
    return _merged(_read_settings_file(path.parent / parent, (*seen, path.resolve())), data)


def _merged(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``change`` laid over it, mapping by mapping at every depth (a list or a value replaces)."""
    merged = dict(base)
    for key, value in change.items():
        section = merged.get(key)
        merged[key] = _merged(section, value) if isinstance(section, dict) and isinstance(value, dict) else value
    return merged


def load_settings(path: str | Path | None = None, imitate: str | None = None, prior: str | None = None,
                  per_node: bool = False, **overrides: Any) -> TrainSettings:
    """Settings from a YAML file (None = ``configs/train/default.yaml`` if present, else the defaults),
    with top-level ``overrides`` (None values are ignored) applied on top, ``imitate`` (``--imitate``)
    as ``imitation.heuristic`` and ``prior`` (``--prior``) as ``policy.prior``. ``per_node``: for the
    decentralized trainer, whose PPO steps are node decisions, not rounds (its batch is checked there)."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is None and DEFAULT_SETTINGS.is_file():
        path = DEFAULT_SETTINGS
    if path is not None:
        try:
            path = find_config(path, TRAINING, "training settings")
        except FileNotFoundError as exc:
            raise SettingsError(str(exc)) from None
        source = str(path)
        data = _read_settings_file(path)
    data.update({key: value for key, value in overrides.items() if value is not None})
    # one field of a section each: the file's other settings of that section stay
    for section_name, field, value in (("imitation", "heuristic", imitate), ("policy", "prior", prior)):
        section = data.get(section_name) or {}
        if value is not None and isinstance(section, dict):
            data[section_name] = {**section, field: value}
    try:
        return TrainSettings.model_validate(data, context={"per_node": per_node})
    except ValidationError as exc:
        lines = [f"invalid training settings ({source}):"]
        for item in exc.errors():
            field = ".".join(str(part) for part in item["loc"]) or "<root>"
            if item["type"] == "extra_forbidden":
                lines.append(f"  - {field}: unknown setting; check the spelling against training/settings.py")
            else:
                lines.append(f"  - {field} = {bounded_repr(item.get('input'))}: {item['msg'][:500]}")
        raise SettingsError("\n".join(lines)) from None
