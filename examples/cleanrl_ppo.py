"""CleanRL-style single-file PPO for GreenGossip: plain ``gymnasium.make`` + the flattening wrapper.

    python examples/cleanrl_ppo.py --config configs/tiny.yaml --total-timesteps 50000
    python examples/cleanrl_ppo.py --config configs/tiny.yaml --total-timesteps 32 --num-steps 16  # smoke

After CleanRL's ``ppo_multidiscrete_mask.py`` (Huang et al., "CleanRL: high-quality single-file
implementations of deep RL algorithms", JMLR 2022; invalid-action masking after Huang & Ontañón 2022):
the action is ``MultiDiscrete([6] * N)``, one categorical head per node, and each node's logits of
actions it cannot afford (``env.action_masks()``) are set to a large negative number before sampling.
Everything is in this file on purpose: copy it and change it. The env is what a CleanRL user would
write themselves::

    env = envs.wrappers.FlattenGossipObservation(gym.make("GreenGossip/EdgeLearning-v3", config=...))

Logs go to ``<out>/<run_name>`` for TensorBoard (``charts/``, ``losses/``, hyperparameters as text);
with ``--save-model`` the agent's ``state_dict`` is saved there too. Seeds: python, numpy and torch are
seeded here, in the script, and env ``i`` resets with ``seed + i``.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from torch.distributions.categorical import Categorical

from greengossip.envs.wrappers import FlattenGossipObservation  # importing the package registers the GreenGossip ids


@dataclass
class Args:
    exp_name: str = "cleanrl_ppo"
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """sets torch.backends.cudnn.deterministic"""
    torch_threads: int = 1
    """torch CPU threads (1 is fastest for these small tensors on a busy machine)"""
    config: str = "configs/tiny.yaml"
    """the env scenario (EnvConfig YAML)"""
    out: str = "runs"
    """folder of the TensorBoard runs"""
    save_model: bool = True
    """save the agent's state_dict to <out>/<run_name>/<exp_name>.cleanrl_model"""

    total_timesteps: int = 50_000
    """total env steps (rounds) over all envs"""
    learning_rate: float = 2.5e-4
    """the learning rate of the optimizer"""
    num_envs: int = 1
    """the number of parallel game environments"""
    num_steps: int = 128
    """the number of steps to run in each environment per policy rollout"""
    anneal_lr: bool = True
    """anneal the learning rate linearly to 0"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 4
    """the number of mini-batches"""
    update_epochs: int = 4
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """advantages normalization"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """use a clipped loss for the value function"""
    ent_coef: float = 0.01
    """coefficient of the entropy"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    target_kl: float | None = None
    """the target KL divergence threshold"""
    mask_actions: bool = True
    """mask the actions each node cannot afford (invalid action masking)"""

    # filled in at run time
    batch_size: int = 0
    minibatch_size: int = 0
    num_iterations: int = 0


def parse_args(argv: list[str] | None = None) -> Args:
    """``--flag value`` for every field of :class:`Args` (CleanRL uses tyro; argparse needs no dependency)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    docs = _field_docs()
    for field in dataclasses.fields(Args):
        if field.name in ("batch_size", "minibatch_size", "num_iterations"):
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=field.default, help=docs.get(field.name)
            )
        else:
            kind = {"int": int, "float": float, "str": str, "float | None": float}[str(field.type)]
            parser.add_argument(flag, type=kind, default=field.default, help=docs.get(field.name))
    return Args(**vars(parser.parse_args(argv)))


def _field_docs() -> dict[str, str]:
    """The docstring under each field of Args (as tyro shows them)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(Args))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
        ):
            docs[node.target.id] = str(following.value.value)
    return docs


def make_env(config: str):
    def thunk():
        env = gym.make("GreenGossip/EdgeLearning-v3", config=config)
        env = FlattenGossipObservation(env)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        return env

    return thunk


def layer_init(layer, std=2**0.5, bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, envs: gym.vector.VectorEnv):
        super().__init__()
        obs_dim = int(np.prod(envs.single_observation_space.shape))
        self.nvec = envs.single_action_space.nvec
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, int(self.nvec.sum())), std=0.01),
        )

    def get_value(self, x):
        return self.critic(x)

    def get_action_and_value(self, x, masks, action=None):
        logits = self.actor(x)
        split_logits = torch.split(logits, self.nvec.tolist(), dim=1)
        split_masks = torch.split(masks, self.nvec.tolist(), dim=1)
        # invalid action masking: a masked logit gets -1e8, i.e. probability 0 (Huang & Ontañón 2022)
        dists = [
            Categorical(logits=torch.where(m, lg, torch.tensor(-1e8, device=lg.device)))
            for lg, m in zip(split_logits, split_masks, strict=True)
        ]
        if action is None:
            action = torch.stack([d.sample() for d in dists])
        logprob = torch.stack([d.log_prob(a) for a, d in zip(action, dists, strict=True)])
        entropy = torch.stack([d.entropy() for d in dists])
        return action.T, logprob.sum(0), entropy.sum(0), self.critic(x)


def current_masks(envs: gym.vector.VectorEnv, args: Args) -> np.ndarray:
    """(num_envs, N * K) bool: the action mask of every env, node after node."""
    if not args.mask_actions:
        return np.ones((envs.num_envs, int(envs.single_action_space.nvec.sum())), dtype=bool)
    return np.stack([np.asarray(m, dtype=bool).reshape(-1) for m in envs.call("action_masks")])


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    args.batch_size = int(args.num_envs * args.num_steps)
    args.minibatch_size = max(int(args.batch_size // args.num_minibatches), 1)
    args.num_iterations = max(args.total_timesteps // args.batch_size, 1)
    run_name = f"GreenGossip__{args.exp_name}__{args.seed}__{int(time.time())}"
    from torch.utils.tensorboard import SummaryWriter

    run_dir = Path(args.out) / run_name
    writer = SummaryWriter(str(run_dir))
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])),
    )

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cpu")

    # env setup: SAME_STEP autoreset, so the observation and mask after a done are the new episode's
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.config) for _ in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    assert isinstance(envs.single_action_space, gym.spaces.MultiDiscrete), (
        "only MultiDiscrete action space is supported"
    )

    agent = Agent(envs).to(device)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    n_logits = int(envs.single_action_space.nvec.sum())

    # ALGO Logic: Storage setup
    obs = torch.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape).to(device)
    actions = torch.zeros((args.num_steps, args.num_envs) + envs.single_action_space.shape).to(device)
    logprobs = torch.zeros((args.num_steps, args.num_envs)).to(device)
    rewards = torch.zeros((args.num_steps, args.num_envs)).to(device)
    dones = torch.zeros((args.num_steps, args.num_envs)).to(device)
    values = torch.zeros((args.num_steps, args.num_envs)).to(device)
    action_masks = torch.zeros((args.num_steps, args.num_envs, n_logits), dtype=torch.bool).to(device)

    # TRY NOT TO MODIFY: start the game
    global_step = 0
    start_time = time.time()
    next_obs, _ = envs.reset(seed=args.seed)
    next_obs = torch.Tensor(next_obs).to(device)
    next_done = torch.zeros(args.num_envs).to(device)
    episode_returns: list[float] = []
    episode_accuracy: list[float] = []

    for iteration in range(1, args.num_iterations + 1):
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / args.num_iterations
            optimizer.param_groups[0]["lr"] = frac * args.learning_rate

        for step in range(0, args.num_steps):
            global_step += args.num_envs
            obs[step] = next_obs
            dones[step] = next_done
            action_masks[step] = torch.as_tensor(current_masks(envs, args), device=device)

            # ALGO LOGIC: action logic
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs, action_masks[step])
                values[step] = value.flatten()
            actions[step] = action
            logprobs[step] = logprob

            # TRY NOT TO MODIFY: execute the game and log data.
            next_obs, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
            next_done = np.logical_or(terminations, truncations)
            rewards[step] = torch.tensor(reward).to(device).view(-1)
            next_obs, next_done = torch.Tensor(next_obs).to(device), torch.Tensor(next_done).to(device)

            # SAME_STEP autoreset: the finished episode's info (RecordEpisodeStatistics' "episode" and the
            # env's episode KPIs) sits under "final_info"; the top level already belongs to the new episode.
            final = infos.get("final_info", {})
            if "episode" in final:
                for i in np.flatnonzero(final["_episode"]):
                    episode_returns.append(float(final["episode"]["r"][i]))
                    episode_accuracy.append(float(final["final_accuracy"][i]))
                    writer.add_scalar("charts/episodic_return", final["episode"]["r"][i], global_step)
                    writer.add_scalar("charts/episodic_length", final["episode"]["l"][i], global_step)
                    writer.add_scalar("env/final_accuracy", final["final_accuracy"][i], global_step)
                    writer.add_scalar("env/episode_carbon_g", final["episode_carbon_g"][i], global_step)

        # bootstrap value if not done
        with torch.no_grad():
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages = torch.zeros_like(rewards).to(device)
            lastgaelam = 0
            for t in reversed(range(args.num_steps)):
                if t == args.num_steps - 1:
                    nextnonterminal = 1.0 - next_done
                    nextvalues = next_value
                else:
                    nextnonterminal = 1.0 - dones[t + 1]
                    nextvalues = values[t + 1]
                delta = rewards[t] + args.gamma * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = (
                    delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
                )
            returns = advantages + values

        # flatten the batch
        b_obs = obs.reshape((-1,) + envs.single_observation_space.shape)
        b_logprobs = logprobs.reshape(-1)
        b_actions = actions.reshape((-1,) + envs.single_action_space.shape)
        b_advantages = advantages.reshape(-1)
        b_returns = returns.reshape(-1)
        b_values = values.reshape(-1)
        b_action_masks = action_masks.reshape((-1, n_logits))

        # Optimizing the policy and value network
        b_inds = np.arange(args.batch_size)
        clipfracs = []
        for _epoch in range(args.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, args.batch_size, args.minibatch_size):
                end = start + args.minibatch_size
                mb_inds = b_inds[start:end]

                _, newlogprob, entropy, newvalue = agent.get_action_and_value(
                    b_obs[mb_inds], b_action_masks[mb_inds], b_actions.long()[mb_inds].T
                )
                logratio = newlogprob - b_logprobs[mb_inds]
                ratio = logratio.exp()

                with torch.no_grad():
                    # calculate approx_kl http://joschu.net/blog/kl-approx.html
                    old_approx_kl = (-logratio).mean()
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs += [((ratio - 1.0).abs() > args.clip_coef).float().mean().item()]

                mb_advantages = b_advantages[mb_inds]
                if args.norm_adv and len(mb_inds) > 1:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                # Policy loss
                pg_loss1 = -mb_advantages * ratio
                pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                pg_loss = torch.max(pg_loss1, pg_loss2).mean()

                # Value loss
                newvalue = newvalue.view(-1)
                if args.clip_vloss:
                    v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                    v_clipped = b_values[mb_inds] + torch.clamp(
                        newvalue - b_values[mb_inds], -args.clip_coef, args.clip_coef
                    )
                    v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                    v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
                else:
                    v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()

                entropy_loss = entropy.mean()
                loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()

            if args.target_kl is not None and approx_kl > args.target_kl:
                break

        y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

        # TRY NOT TO MODIFY: record rewards for plotting purposes
        sps = int(global_step / (time.time() - start_time))
        writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
        writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
        writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
        writer.add_scalar("losses/entropy", entropy_loss.item(), global_step)
        writer.add_scalar("losses/old_approx_kl", old_approx_kl.item(), global_step)
        writer.add_scalar("losses/approx_kl", approx_kl.item(), global_step)
        writer.add_scalar("losses/clipfrac", np.mean(clipfracs), global_step)
        writer.add_scalar("losses/explained_variance", explained_var, global_step)
        writer.add_scalar("charts/SPS", sps, global_step)
        print(
            f"iteration {iteration}/{args.num_iterations}  global_step {global_step}  SPS {sps}  "
            f"episodes {len(episode_returns)}",
            flush=True,
        )

    summary = {
        "global_step": float(global_step),
        "sps": global_step / (time.time() - start_time),
        "episodes": float(len(episode_returns)),
        "mean_episodic_return": float(np.mean(episode_returns)) if episode_returns else float("nan"),
        "mean_final_accuracy": float(np.mean(episode_accuracy)) if episode_accuracy else float("nan"),
    }
    if args.save_model:
        model_path = run_dir / f"{args.exp_name}.cleanrl_model"
        torch.save(agent.state_dict(), model_path)
        print(f"model saved to {model_path}")
    print("summary: " + ", ".join(f"{key} {value:.4g}" for key, value in summary.items()), flush=True)
    envs.close()
    writer.close()
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
