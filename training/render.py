"""``greengossip render``: a short animation of one episode under one scheduler.

    greengossip render --scheduler energy_carbon_trust --config configs/tiny.yaml --out episode.gif

Frames come from the env's ``render_mode="rgb_array"`` (node colour = state of charge, big = awake,
dark edges = carried a broadcast; see ``envs/render.py``). The result is a GIF written with
matplotlib's ``PillowWriter`` when Pillow is installed, otherwise (or when ``--out`` ends in ``.png``)
a PNG strip of up to ``--strip-frames`` evenly spaced frames.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import gymnasium as gym
import numpy as np

from greengossip.agents.learned import make_scheduler
from greengossip.envs import ENV_ID
from greengossip.training.arg_types import int_at_least, positive_finite_float
from greengossip.training.rollout import env_for, one_torch_thread, play_episode
from greengossip.training.run_files import check_writable_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scheduler", default="energy_carbon_trust",
                        help="heuristic name or saved SB3 model path (default energy_carbon_trust)")
    parser.add_argument("--config", default="tiny",
                        help="env scenario: a shipped name or a YAML path (default tiny)")
    parser.add_argument("--out", required=True, help="output file: .gif (animation) or .png (frame strip); its "
                        "folder is checked for writing before the episode is played")
    parser.add_argument("--seed", type=int, default=0, help="env seed (default 0)")
    parser.add_argument("--max-frames", type=int_at_least(0), default=48,
                        help="stop after this many rounds (default 48; the episode may end sooner)")
    parser.add_argument("--fps", type=positive_finite_float, default=4.0, help="GIF frames per second (default 4)")
    parser.add_argument("--strip-frames", type=int_at_least(1), default=8, help="frames in a PNG strip (default 8)")


def run(args: argparse.Namespace) -> int:
    check_writable_file(args.out, "--out")
    frames = episode_frames(args.scheduler, args.config, seed=args.seed, max_frames=args.max_frames)
    path = write_animation(frames, args.out, fps=args.fps, strip_frames=args.strip_frames)
    print(f"wrote {path} ({len(frames)} frames)")
    return 0


def episode_frames(scheduler: str, config, seed: int = 0, max_frames: int = 48) -> list[np.ndarray]:
    """RGB frames of one episode: the state after reset, then after every round (at most ``max_frames``)."""
    frames: list[np.ndarray] = []
    with one_torch_thread():
        env = gym.make(ENV_ID, config=config, render_mode="rgb_array")
        policy = make_scheduler(scheduler, env=env, seed=seed)
        env = env_for(policy, env)
        play_episode(policy, env, seed, on_step=lambda info, reward: frames.append(env.render()),
                     max_steps=max_frames)
        env.close()
    return frames


def write_animation(
    frames: list[np.ndarray], out: str | Path, fps: float = 4.0, strip_frames: int = 8
) -> Path:
    """GIF (matplotlib ``PillowWriter``) if Pillow is there and ``out`` is not a .png; else a PNG strip.
    Returns the path written (a ``.png`` next to ``out`` when a GIF was asked for without Pillow)."""
    # imported when a file is written, not with the module: see plots._pyplot
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not frames:
        raise ValueError("no frames to write")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() != ".png" and importlib.util.find_spec("PIL") is not None:
        from matplotlib.animation import FuncAnimation, PillowWriter

        height, width = frames[0].shape[:2]
        fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.axis("off")
        image = ax.imshow(frames[0])

        def show(i: int):
            image.set_data(frames[i])
            return (image,)

        animation = FuncAnimation(fig, show, frames=len(frames), blit=True)
        try:
            animation.save(out, writer=PillowWriter(fps=fps))
        finally:
            plt.close(fig)
        return out
    path = out if out.suffix.lower() == ".png" else out.with_suffix(".png")
    picks = np.unique(np.linspace(0, len(frames) - 1, min(strip_frames, len(frames))).round().astype(int))
    strip = np.concatenate([frames[i] for i in picks], axis=1)
    plt.imsave(path, strip)
    return path
