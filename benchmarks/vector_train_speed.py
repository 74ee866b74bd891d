"""MaskablePPO with the node-set policy trained on the batched vector env (``GossipVecEnv``: B environments
of N nodes as one program), on each device given: env-steps/s of ``learn`` (rollouts and PPO updates
together) and of the rollouts alone, and the mean episode return SB3 logged, so that a run on CUDA shows
both that training works there and what it gains. The env and the policy sit on the same device.
``--workers`` repeats each device with the vector env's workers (groups of environments stepped at once;
design note 20), as threads and, with ``--worker-kinds thread process``, as processes too (design note 21).

    python benchmarks/vector_train_speed.py --devices cpu cuda --envs 64 --nodes 32 --timesteps 12288
    python benchmarks/vector_train_speed.py --workers 1 2 --worker-kinds thread process
"""

from __future__ import annotations

import argparse
import time

import torch
from sb3_contrib import MaskablePPO
from stable_baselines3.common.callbacks import BaseCallback

from greengossip.agents.policies import MaskableNodeSetPolicy
from greengossip.envs.config import EnvConfig
from greengossip.envs.sb3_vec_env import GossipVecEnv


class RolloutTimer(BaseCallback):
    """Wall time spent collecting rollouts (env steps plus the policy's forward passes)."""

    def __init__(self):
        super().__init__()
        self.seconds = 0.0
        self._start = 0.0

    def _on_rollout_start(self) -> None:
        self._start = time.perf_counter()

    def _on_rollout_end(self) -> None:
        self.seconds += time.perf_counter() - self._start

    def _on_step(self) -> bool:
        return True


def train(device: str, n_envs: int, n_nodes: int, timesteps: int, seed: int, workers: int = 1,
          worker_kind: str = "thread") -> tuple[float, float, int, float]:
    config = EnvConfig(n_nodes=n_nodes, device=device)
    env = GossipVecEnv(n_envs, config=config, seed=seed, workers=workers, worker_kind=worker_kind)
    model = MaskablePPO(MaskableNodeSetPolicy, env, n_steps=32, batch_size=512, n_epochs=2, seed=seed,
                        device=device, verbose=0)
    timer = RolloutTimer()
    start = time.perf_counter()
    model.learn(timesteps, callback=timer)
    total = time.perf_counter() - start
    env.close()
    returns = [episode["r"] for episode in model.ep_info_buffer]
    mean_return = sum(returns) / len(returns) if returns else float("nan")
    return model.num_timesteps / total, model.num_timesteps / timer.seconds, len(returns), mean_return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", nargs="+", default=["cpu"])
    parser.add_argument("--envs", type=int, default=64, help="B, environments in the batched program")
    parser.add_argument("--nodes", type=int, default=32, help="N, nodes per environment")
    parser.add_argument("--timesteps", type=int, default=64 * 32 * 4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="vector env workers to try")
    parser.add_argument("--worker-kinds", nargs="+", choices=("thread", "process"), default=["thread"],
                        help="how workers above 1 run (processes: CPU only)")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}; MaskablePPO, n_steps 32, B = {args.envs}, N = {args.nodes}, "
          f"{args.timesteps} env steps\n")
    print("| device | workers | learn env-steps/s | rollout env-steps/s | episodes ended | their mean return |")
    print("|---|---|---:|---:|---:|---:|")
    for device in args.devices:
        for workers in args.workers:
            for kind in args.worker_kinds if workers > 1 else ["thread"]:
                label = f"{workers} {kind}{'es' if kind == 'process' else 's'}" if workers > 1 else "1"
                if kind == "process" and device != "cpu":
                    print(f"| {device} | {label} | skipped: worker processes run on the CPU only | | | |")
                    continue
                learn, rollout, episodes, mean_return = train(device, args.envs, args.nodes, args.timesteps,
                                                              args.seed, workers, kind)
                print(f"| {device} | {label} | {learn:.0f} | {rollout:.0f} | {episodes} | {mean_return:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
