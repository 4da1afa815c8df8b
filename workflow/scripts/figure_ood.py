"""Figure 3, out-of-distribution: on each env with an ood split (cheetah-vel: target
velocities in [3, 4], meta-trained on [0, 3]), the score per episode on the OOD tasks, and the
last episode's score against the task parameter. The in-distribution test tasks are figure 2's."""

import numpy as np
import pandas as pd
import plotting

BINS = 5  # bins of the task parameter for the mean lines of the right panel


def draw_by_task_param(ax, tasks: pd.DataFrame, env_info: dict) -> None:
    """Last-episode score of every OOD task of every seed (dots) and its mean over bins of the
    task parameter (lines)."""
    last = tasks[tasks["episode"] == tasks["episode"].max()]
    metric = last["metric"].iloc[0]
    k = plotting.scale(metric)
    edges = np.linspace(last["task_param"].min(), last["task_param"].max(), BINS + 1)
    for agent in plotting.ordered(last["agent"]):
        mine = last[last["agent"] == agent]
        style = plotting.agent_style(agent)
        ax.scatter(mine["task_param"], mine["value"] * k, s=7, alpha=0.3, color=style["color"],
                   marker=style["marker"], linewidths=0, zorder=1)
        bins = pd.cut(mine["task_param"], edges, include_lowest=True)
        means = mine.groupby(bins, observed=True).agg(x=("task_param", "mean"), y=("value", "mean"))
        style.pop("label")
        ax.plot(means["x"], means["y"] * k, linewidth=1.6, markersize=4, zorder=3, **style)
    ax.set_xlabel(plotting.task_param_label(env_info))
    plotting.set_metric_axis(ax, metric)


def build(snakemake):
    plotting.setup()
    envs_info = snakemake.params.analysis["envs"]
    ood = pd.read_csv(snakemake.input.ood)
    by_task = pd.read_csv(snakemake.input.ood_by_task)
    envs = [env for env in envs_info if env in set(ood["env"])]
    fig, axes = plotting.panel_grid(2 * max(1, len(envs)), max_cols=2, width=3.8)
    if not envs:
        plotting.no_data(fig, axes.flat[0], "no finished runs yet")
    show_n = bool(snakemake.params.missing)
    for row, env in zip(axes.reshape(-1, 2), envs):
        plotting.draw_episodes(row[0], ood[ood["env"] == env], show_n)
        draw_by_task_param(row[1], by_task[by_task["env"] == env], envs_info[env])
        row[0].set_title(f"{env}: OOD tasks")
        row[1].set_title(f"{env}: OOD, last episode")
    return plotting.finish(fig, axes, snakemake.params.missing)


main = plotting.script_main(build)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by snakemake's `script:`)
