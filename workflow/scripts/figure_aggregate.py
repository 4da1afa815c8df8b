"""Figure 6, aggregate over envs: IQM of the normalised score (0 = memoryless, 1 = oracle)
over every env x seed run, with 95% stratified bootstrap CIs; and the probability that a run
of agent X scores above a run of agent Y on the same env, P(X > Y), with its CI."""

import numpy as np
import pandas as pd
import plotting

REFERENCES = ("oracle", "memoryless")


def draw_iqm(ax, aggregate: pd.DataFrame) -> None:
    agents = plotting.ordered(aggregate["agent"])
    for y, agent in enumerate(agents):
        row = aggregate[aggregate["agent"] == agent].iloc[0]
        style = plotting.agent_style(agent)
        error = [[row["iqm"] - row["iqm_ci_low"]], [row["iqm_ci_high"] - row["iqm"]]]
        ax.errorbar(row["iqm"], y, xerr=np.nan_to_num(error), fmt=style["marker"] or "o",
                    color=style["color"], capsize=4, markersize=7, label=style["label"])
        ax.annotate(f"{row['n_runs']} runs, {row['n_envs']} envs", (row["iqm"], y),
                    xytext=(0, 7), textcoords="offset points", ha="center", fontsize=7)
    ax.set_yticks(range(len(agents)), [plotting.AGENT_LABELS.get(a, a) for a in agents])
    ax.set_ylim(len(agents) - 0.5, -0.7)
    for reference in (0, 1):
        ax.axvline(reference, color="0.5", linewidth=0.8, linestyle=":")
    ax.set(title="IQM over envs and seeds", xlabel="Normalised score (memoryless 0, oracle 1)")


def draw_improvement(ax, improvement: pd.DataFrame) -> None:
    challengers = [a for a in plotting.ordered(improvement["agent_x"]) if a not in REFERENCES]
    rows = improvement[improvement["agent_x"].isin(challengers or improvement["agent_x"])]
    rows = rows.assign(order_x=rows["agent_x"].map(plotting.ordered(rows["agent_x"]).index),
                       order_y=rows["agent_y"].map(plotting.ordered(rows["agent_y"]).index))
    rows = rows.sort_values(["order_x", "order_y"])
    for y, row in enumerate(rows.itertuples()):
        style = plotting.agent_style(row.agent_x)
        error = [[row.probability - row.ci_low], [row.ci_high - row.probability]]
        ax.errorbar(row.probability, y, xerr=np.nan_to_num(error), fmt="o", color=style["color"],
                    capsize=4, markersize=6)
    labels = [f"{plotting.AGENT_LABELS.get(r.agent_x, r.agent_x).split(' (')[0]} > "
              f"{plotting.AGENT_LABELS.get(r.agent_y, r.agent_y).split(' (')[0]}"
              for r in rows.itertuples()]
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.7)
    ax.set_xlim(-0.02, 1.02)
    ax.axvline(0.5, color="0.5", linewidth=0.8, linestyle=":")
    ax.set(title="Probability of improvement", xlabel="P(X > Y), runs on the same env")


def main(snakemake):
    plotting.setup()
    aggregate = pd.read_csv(snakemake.input.aggregate)
    improvement = pd.read_csv(snakemake.input.improvement)
    rows = max(len(aggregate), len(improvement), 2)
    fig, axes = plotting.panel_grid(2, max_cols=2, width=4.4, height=0.4 * rows + 1.6)
    if aggregate.empty:
        plotting.no_data(fig, axes.flat[0], "no normalised scores (oracle and memoryless needed)")
    else:
        draw_iqm(axes.flat[0], aggregate)
    if improvement.empty:
        plotting.no_data(fig, axes.flat[1], "fewer than two agents")
    else:
        draw_improvement(axes.flat[1], improvement)
    plotting.partial_note(fig, snakemake.params.missing)
    plotting.save(fig, snakemake.output)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by snakemake's `script:`)
