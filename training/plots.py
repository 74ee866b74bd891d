"""Evaluation plots (PNG, matplotlib's Agg backend): one column per config in every figure.

* ``pareto.png``: episode carbon vs final accuracy, one point per episode, the mean per scheduler with
  its 95 % interval, and the Pareto front of the means (less carbon, more accuracy);
* ``curves.png``: honest mean accuracy and cumulative carbon over rounds (mean over seeds);
* ``battery.png``: mean state of charge of the fleet over rounds (mean over seeds), and its minimum node.

An episode that ended early (target reached) holds its last value, so every curve spans the longest
episode of its config.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from greengossip.training.statistics import mean_ci


def _pyplot():
    # imported when a figure is drawn, not with the module: choosing the Agg backend at import time would
    # take the interactive one away from a notebook or script that only imports the package
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _colours(schedulers: list[str]) -> dict[str, tuple]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(schedulers) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(schedulers)}


def _order(rows: list[dict], key: str) -> list[str]:
    return list(dict.fromkeys(row[key] for row in rows))


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both (lower x, higher y), sorted by x."""
    front = []
    for i, (x, y) in enumerate(points):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        dominated = any(
            (x2 <= x and y2 >= y) and (x2 < x or y2 > y)
            for j, (x2, y2) in enumerate(points) if j != i and np.isfinite(x2) and np.isfinite(y2)
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _fit_axis(set_limits, values, floor: float | None = None, ceiling: float | None = None) -> None:
    data = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if data.size == 0:
        return
    low, high = float(data.min()), float(data.max())
    margin = 0.08 * (high - low) if high > low else max(abs(high) * 0.05, 1e-3)
    low, high = low - margin, high + margin
    if floor is not None:
        low = max(low, floor)
    if ceiling is not None:
        high = min(high, ceiling)
    set_limits(low, high)


def pareto_plot(rows: list[dict], path: Path, baseline: str | None = None) -> None:
    plt = _pyplot()
    configs, schedulers = _order(rows, "config"), _order(rows, "scheduler")
    colours = _colours(schedulers)
    fig, axes = plt.subplots(1, len(configs), figsize=(6.5 * len(configs), 4.8), squeeze=False)
    for ax, config in zip(axes[0], configs):
        means, xs, ys = [], [], []
        for name in schedulers:
            group = [r for r in rows if r["config"] == config and r["scheduler"] == name]
            x = [r["episode_carbon_g"] for r in group]
            y = [r["final_accuracy"] for r in group]
            xs += x
            ys += y
            ax.scatter(x, y, color=colours[name], alpha=0.3, s=14, linewidths=0)
            (mx, hx, _), (my, hy, _) = mean_ci(x), mean_ci(y)
            means.append((mx, my))
            is_base = name == baseline
            ax.errorbar(mx, my, xerr=np.nan_to_num(hx), yerr=np.nan_to_num(hy), color=colours[name],
                        capsize=3, marker="*" if is_base else "o", markersize=9 if is_base else 6, label=name)
        front = pareto_front(means)
        if len(front) > 1:
            ax.plot([means[i][0] for i in front], [means[i][1] for i in front], "k--", lw=0.8, zorder=0,
                    label="Pareto front")
        # Axes fit the episodes, not the error bars: with a handful of seeds a t-interval can reach
        # below zero carbon, which would squash every point into a corner.
        _fit_axis(ax.set_xlim, xs, floor=0.0)
        _fit_axis(ax.set_ylim, ys, floor=0.0, ceiling=1.0)
        finite = [m[0] for m in means if np.isfinite(m[0]) and m[0] > 0]
        if finite and max(finite) / min(finite) > 20:
            ax.set_xscale("log")
            ax.set_xlim(left=min(v for v in xs if v > 0) / 1.5)
        ax.set_xlabel("episode carbon (gCO2e)")
        ax.set_ylabel("final accuracy (honest nodes)")
        ax.set_title(f"{config}: carbon vs accuracy")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mean_curves(traces: list[tuple[dict, dict]], config: str, name: str, field: str) -> np.ndarray | None:
    series = [np.asarray(trace[field], dtype=float) for row, trace in traces
              if row["config"] == config and row["scheduler"] == name]
    if not series:
        return None
    length = max(len(s) for s in series)
    padded = np.stack([np.pad(s, (0, length - len(s)), mode="edge") for s in series])
    return padded.mean(0)


def _curve_figure(traces, path: Path, panels: list[tuple[str, str, str | None]], title: str) -> None:
    plt = _pyplot()
    rows = [row for row, _ in traces]
    configs, schedulers = _order(rows, "config"), _order(rows, "scheduler")
    colours = _colours(schedulers)
    fig, axes = plt.subplots(len(panels), len(configs), figsize=(6.5 * len(configs), 3.4 * len(panels)),
                             squeeze=False, sharex="col")
    for col, config in enumerate(configs):
        for row_index, (field, label, dashed) in enumerate(panels):
            ax = axes[row_index][col]
            for name in schedulers:
                curve = _mean_curves(traces, config, name, field)
                if curve is None:
                    continue
                ax.plot(np.arange(len(curve)), curve, color=colours[name], lw=1.4, label=name)
                if dashed:
                    low = _mean_curves(traces, config, name, dashed)
                    ax.plot(np.arange(len(low)), low, color=colours[name], lw=0.8, ls=":")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if row_index == 0:
                ax.set_title(f"{config}: {title}")
            if row_index == len(panels) - 1:
                ax.set_xlabel("round")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves_plot(traces: list[tuple[dict, dict]], path: Path) -> None:
    _curve_figure(traces, path, [("accuracy", "accuracy (honest mean)", None),
                                 ("cumulative_carbon_g", "cumulative carbon (gCO2e)", None)],
                  "accuracy and carbon over rounds")


def battery_plot(traces: list[tuple[dict, dict]], path: Path) -> None:
    _curve_figure(traces, path, [("mean_soc", "state of charge (mean; dotted: lowest node)", "min_soc")],
                  "battery over rounds")


def write_all(rows: list[dict], traces: list[tuple[dict, dict]], out_dir: str | Path,
              baseline: str | None = None) -> list[Path]:
    out = Path(out_dir)
    paths = [out / "pareto.png", out / "curves.png", out / "battery.png"]
    pareto_plot(rows, paths[0], baseline)
    curves_plot(traces, paths[1])
    battery_plot(traces, paths[2])
    return paths
