"""Drawing an episode: a network picture (rgb_array) and a one-line round summary (ansi)."""

from __future__ import annotations

import numpy as np

from greengossip.envs.scenario import Scenario
from greengossip.envs.state import SimState


def draw_network(scenario: Scenario, state: SimState, sent: np.ndarray | None, title: str) -> np.ndarray:
    """RGB image: node colour = battery state of charge, size = took part last round,
    dark edges = carried a broadcast last round, a red ring = attacker (ground truth, for people only)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    pos = scenario.positions
    soc = (state.battery_wh / scenario.capacity_wh).cpu().numpy()
    awake = (state.last_action >= 1).cpu().numpy()
    src = scenario.edge_src.cpu().numpy()
    dst = scenario.edge_dst.cpu().numpy()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=80)
    try:
        active = sent[src] if sent is not None else np.zeros(len(src), dtype=bool)
        for carried in (False, True):
            sel = active == carried
            if sel.any():
                segments = np.stack([pos[src[sel]], pos[dst[sel]]], axis=1)
                from matplotlib.collections import LineCollection

                ax.add_collection(LineCollection(segments, colors="0.15" if carried else "0.85",
                                                 linewidths=1.2 if carried else 0.6, zorder=1))
        honest = scenario.honest.cpu().numpy()
        ax.scatter(pos[:, 0], pos[:, 1], c=soc, cmap="RdYlGn", vmin=0, vmax=1, s=np.where(awake, 140, 40),
                   edgecolors=np.where(honest, "black", "red"), linewidths=np.where(honest, 0.5, 2.0), zorder=2)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
        ax.autoscale()
        fig.tight_layout()
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    finally:
        plt.close(fig)


def summary_line(round_index: int, accuracy: float, info: dict) -> str:
    return (
        f"round {round_index:4d} | acc {accuracy:.3f} | awake {info.get('participants', 0):3d} "
        f"| dropped {info.get('dropped_nodes', 0):3d} | {info.get('energy_wh', 0.0):7.3f} Wh "
        f"| grid {info.get('grid_wh', 0.0):6.3f} Wh | {info.get('carbon_g', 0.0):7.3f} gCO2e "
        f"| {info.get('bytes_sent', 0) / 1e6:8.1f} MB"
    )
