"""Figure 3, out-of-distribution: on each env with an ood split (cheetah-vel: target
velocities in [3, 4], trained on [0, 3]), the score per episode on the in-distribution test
tasks and on the OOD tasks, and the last episode's return against the task parameter."""

import numpy as np
import pandas as pd
import plotting


def draw_by_task_param(ax, tasks: pd.DataFrame, env_info: dict) -> None:
    """Last-episode score of every OOD task (dots) and its mean over task-parameter bins."""
    last = tasks[tasks["episode"] == tasks["episode"].max()]
    metric = last["metric"].iloc[0]
    k = plotting.scale(metric)
    edges = np.linspace(last["task_param"].min(), last["task_param"].max(), 6)
    for agent in plotting.ordered(last["agent"]):
        mine = last[last["agent"] == agent]
        style = plotting.agent_style(agent)
        ax.scatter(mine["task_param"], mine["value"] * k, s=8, alpha=0.35, color=style["color"],
                   linewidths=0)
        bins = pd.cut(mine["task_param"], edges, include_lowest=True)
        means = mine.groupby(bins, observed=True).agg(x=("task_param", "mean"), y=("value", "mean"))
        ax.plot(means["x"], means["y"] * k, color=style["color"], linestyle=style["linestyle"],
                linewidth=1.6)
    ax.set_xlabel(plotting.wrap(env_info["task_param"]))
    plotting.set_metric_axis(ax, metric, prefix="Last episode:")


def main(snakemake):
    plotting.setup()
    envs_info = snakemake.params.analysis["envs"]
    adaptation = pd.read_csv(snakemake.input.adaptation)
    ood = pd.read_csv(snakemake.input.ood)
    by_task = pd.read_csv(snakemake.input.ood_by_task)
    envs = [env for env in envs_info if env in set(ood["env"])]
    fig, axes = plotting.panel_grid(3 * max(1, len(envs)), max_cols=3)
    if not envs:
        plotting.no_data(fig, axes.flat[0], "no finished runs yet")
    show_n = bool(snakemake.params.missing)
    for row, env in zip(axes.reshape(-1, 3), envs):
        plotting.draw_episodes(row[0], adaptation[adaptation["env"] == env], show_n)
        plotting.draw_episodes(row[1], ood[ood["env"] == env], show_n)
        draw_by_task_param(row[2], by_task[by_task["env"] == env], envs_info[env])
        row[0].set_title(f"{env}: test tasks")
        row[1].set_title(f"{env}: OOD tasks")
        row[2].set_title(f"{env}: OOD, by task")
    plotting.legend_outside(fig, axes)
    plotting.partial_note(fig, snakemake.params.missing)
    plotting.save(fig, snakemake.output)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by snakemake's `script:`)
