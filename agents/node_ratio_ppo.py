"""MaskablePPO with one clipped probability ratio per node instead of one per fleet.

The node-set policy (``agents/policies.py``) factorises a round's action over the nodes given the fleet's
observation, π(a | s) = Π_i π_i(a_i | s). PPO's surrogate clips the joint ratio Π_i r_i: with 24 nodes
a change of a few percent in each node's choice already leaves the clip range, so every update moves each
node's action very little, and a residual policy stays close to the rule it starts from. Here each node's
ratio r_i is clipped by itself and the clipped surrogates are summed over the nodes, all with the fleet's
advantage: the independent-ratio objective of multi-agent PPO with a shared reward (de Witt et al., "Is
Independent Learning All You Need in the StarCraft Multi-Agent Challenge?", 2020; Yu et al., "The
Surprising Effectiveness of PPO in Cooperative Multi-Agent Games", NeurIPS 2022). Where every ratio is 1
(the first minibatch of an update) its gradient equals PPO's; only what the clip lets through differs.

The per-node log-probabilities of the policy that collected the rollout are computed once, over the whole
rollout, before the update's first step (the rollout buffer keeps only their sum), and each minibatch
reads its rows; the minibatches are drawn as the buffer's own ``get`` draws them. Everything else is
sb3-contrib's ``MaskablePPO.train``: advantage normalisation, value clipping, the ``ent_coef`` term, the KL
early stop on the joint ratio, gradient clipping and the logged figures.
"""

from __future__ import annotations

import numpy as np
import torch as th
from sb3_contrib import MaskablePPO
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

RATIOS = ("joint", "per_node")


class NodeRatioMaskablePPO(MaskablePPO):
    """sb3-contrib's MaskablePPO with the per-node clipped surrogate (see the module docstring). Needs a
    policy whose ``evaluate_actions`` takes ``per_node=True`` and whose distribution has ``node_log_prob``
    (the feed-forward node-set policies). A saved model is an
    ordinary MaskablePPO zip: ``MaskablePPO.load`` reads it."""

    def _behaviour_log_prob(self, buffer, size: int) -> th.Tensor:
        """(size, N): each node's log-probability of its rollout action under the policy that collected the
        rollout (the current one: no step has been taken yet), in the buffer's flattened order."""
        if not buffer.generator_ready:  # flatten the buffer as its get() does, without drawing a shuffle
            state = np.random.get_state()
            next(buffer.get())
            np.random.set_state(state)
        self.policy.set_training_mode(False)
        with th.no_grad():  # the distribution alone: no critic, no regulariser
            parts = []
            for start in range(0, size, self.batch_size):
                data = buffer._get_samples(np.arange(start, min(start + self.batch_size, size)))
                parts.append(self.policy.get_distribution(data.observations, action_masks=data.action_masks)
                             .node_log_prob(data.actions))
        return th.cat(parts)

    def train(self) -> None:
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)
        buffer = self.rollout_buffer
        size = buffer.buffer_size * buffer.n_envs
        behaviour_log_prob = self._behaviour_log_prob(buffer, size)
        self.policy.set_training_mode(True)

        entropy_losses, pg_losses, value_losses, clip_fractions = [], [], [], []
        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            indices = np.random.permutation(size)  # the buffer's get() draws its shuffle so
            for start in range(0, size, self.batch_size):
                rows = indices[start:start + self.batch_size]
                rollout_data = buffer._get_samples(rows)
                values, log_prob, entropy = self.policy.evaluate_actions(
                    rollout_data.observations, rollout_data.actions, action_masks=rollout_data.action_masks,
                    per_node=True)
                old_log_prob = behaviour_log_prob[th.as_tensor(rows, device=behaviour_log_prob.device)]
                values = values.flatten()
                advantages = rollout_data.advantages
                if self.normalize_advantage:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

                log_ratio = log_prob - old_log_prob  # (B, N)
                ratio = th.exp(log_ratio)
                advantages = advantages.unsqueeze(1)
                policy_loss_1 = advantages * ratio
                policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
                policy_loss = -th.min(policy_loss_1, policy_loss_2).sum(dim=1).mean()
                pg_losses.append(policy_loss.item())
                clip_fractions.append(th.mean((th.abs(ratio - 1) > clip_range).float()).item())

                if self.clip_range_vf is None:
                    values_pred = values
                else:
                    values_pred = rollout_data.old_values + th.clamp(
                        values - rollout_data.old_values, -clip_range_vf, clip_range_vf)
                value_loss = F.mse_loss(rollout_data.returns, values_pred)
                value_losses.append(value_loss.item())
                entropy_loss = -th.mean(entropy)  # the node-set policies always return their regulariser
                entropy_losses.append(entropy_loss.item())
                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss

                with th.no_grad():  # the joint ratio's KL, as MaskablePPO measures it
                    joint = log_ratio.sum(dim=1)
                    approx_kl_div = th.mean((th.exp(joint) - 1) - joint).cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)
                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    break

                self.policy.optimizer.zero_grad()
                loss.backward()
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()

            self._n_updates += 1
            if not continue_training:
                break
        explained_var = explained_variance(self.rollout_buffer.values.flatten(),
                                           self.rollout_buffer.returns.flatten())
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
