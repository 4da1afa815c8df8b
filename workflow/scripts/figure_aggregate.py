"""Figure 6, aggregate over envs, as rliable draws it. Top row: median, IQM, mean and
optimality gap of the normalised score (0 = memoryless, 1 = oracle) over every env x seed run,
one row per agent, with 95% stratified bootstrap CIs. Bottom: probability of improvement,
P(X > Y) that a run of X beats a run of Y on the same env, for the agent of interest against
each baseline (or all pairs as a matrix). The references are the scale, never a row. The title
names the envs that went in, and those left out and why."""

import aggregate_scores
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import plotting

PANELS = [("median", "Median"), ("iqm", "IQM"), ("mean", "Mean"),
          ("optimality_gap", "Optimality gap")]
SCORE_LABEL = "Normalised score"
GAP_LABEL = "Shortfall from oracle (lower is better)"
BAR_ALPHA = 0.85  # the agent's colour stays recognisable; the black tick stays on top


def envs_title(used: list[str], excluded: dict[str, str]) -> str:
    title = f"Aggregate over {len(used)} env{'s' * (len(used) != 1)}: {', '.join(used) or 'none'}"
    if excluded:
        title += "\nleft out: " + "; ".join(f"{env} ({why})" for env, why in excluded.items())
    return title


def draw_interval_panels(axes, aggregate: pd.DataFrame, agents: list[str]) -> None:
    """One panel per metric: the CI as a bar, the point estimate as a black tick."""
    rows = aggregate.set_index("agent")
    for ax, (metric, title) in zip(axes, PANELS):
        for y, agent in enumerate(agents):
            # the mean's CI keeps DESIGN.md's plain column names
            prefix = "" if metric == "mean" else f"{metric}_"
            point, low, high = rows.loc[agent, [metric, f"{prefix}ci_low", f"{prefix}ci_high"]]
            low, high = (point, point) if np.isnan(low) else (low, high)  # one run: no CI
            ax.barh(y, high - low, left=low, height=0.6, color=plotting.AGENT_COLOURS.get(agent),
                    alpha=BAR_ALPHA, label=plotting.label(agent))
            ax.vlines(point, y - 0.3, y + 0.3, color="black", linewidth=1.8)
        # the references' scores: memoryless 0 and oracle 1 (optimality gap: oracle 0)
        for reference, name in ((0, "oracle"), (1, "memoryless")) if metric == "optimality_gap" \
                else ((0, "memoryless"), (1, "oracle")):
            ax.axvline(reference, color="0.35", linewidth=1.0, linestyle=(0, (4, 2)), zorder=0.5)
            ax.annotate(name, (reference, 1), xycoords=("data", "axes fraction"),
                        xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                        fontsize=7, color="0.35")
        low = min(0.0, *ax.dataLim.intervalx)
        high = max(1.0, *ax.dataLim.intervalx)
        ax.set_xlim(low - 0.05 * (high - low), high + 0.05 * (high - low))
        ax.set_title(title, pad=12)
        ax.set_xlabel(GAP_LABEL if metric == "optimality_gap" else SCORE_LABEL)
        ax.grid(axis="y", visible=False)
    axes[0].set_yticks(range(len(agents)), [plotting.label(a) for a in agents])
    axes[0].set_ylim(len(agents) - 0.5, -0.5)


def draw_improvement_bars(ax, improvement: pd.DataFrame, agent: str, baselines: list[str]) -> None:
    """P(agent > baseline) with its CI, one row per baseline."""
    rows = improvement.set_index(["agent_x", "agent_y"])
    for y, baseline in enumerate(baselines):
        point, low, high = rows.loc[(agent, baseline), ["probability", "ci_low", "ci_high"]]
        low, high = (point, point) if np.isnan(low) else (low, high)
        ax.barh(y, high - low, left=low, height=0.6, color=plotting.AGENT_COLOURS.get(baseline),
                alpha=BAR_ALPHA)
        ax.vlines(point, y - 0.3, y + 0.3, color="black", linewidth=1.8)
    ax.set_yticks(range(len(baselines)),
                  [f"P({plotting.label(agent, True)} > {plotting.label(b, True)})"
                   for b in baselines])
    ax.set_ylim(len(baselines) - 0.5, -0.5)
    ax.set_xlim(0, 1)
    ax.axvline(0.5, color="0.5", linewidth=0.8, linestyle=":", zorder=0)
    ax.grid(axis="y", visible=False)
    ax.set(title="Probability of improvement", xlabel="P(X > Y), runs on the same env")


def draw_improvement_matrix(fig, ax, improvement: pd.DataFrame, agents: list[str]) -> None:
    """P(row > column) for every pair, annotated; the diagonal is empty."""
    matrix = np.full((len(agents), len(agents)), np.nan)
    for row in improvement.itertuples():
        if row.agent_x in agents and row.agent_y in agents:
            matrix[agents.index(row.agent_x), agents.index(row.agent_y)] = row.probability
    image = ax.imshow(matrix, cmap="RdBu", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(matrix):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
    names = [plotting.label(a, short=True) for a in agents]
    ax.set_xticks(range(len(agents)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(agents)), names)
    ax.grid(False)
    ax.set(title="Probability of improvement P(row > column)", xlabel="Y", ylabel="X")
    fig.colorbar(image, ax=ax, label="P(X > Y)", shrink=0.9)


def build(snakemake):
    plotting.setup()
    settings = snakemake.params.figures
    aggregate = pd.read_csv(snakemake.input.aggregate)
    improvement = pd.read_csv(snakemake.input.improvement)
    curves = pd.read_csv(snakemake.input.curves)
    normalized, excluded = aggregate_scores.normalise(aggregate_scores.final_scores(curves))
    order = list(snakemake.params.analysis["envs"])
    used = sorted(set(normalized["env"]), key=order.index)
    agents = [a for a in plotting.ordered(aggregate["agent"]) if a not in plotting.REFERENCES]
    focus = settings["agent_of_interest"]
    matrix = settings["probability_of_improvement"] == "matrix"
    baselines = [a for a in agents if a != focus]
    bottom_rows = len(agents) + 1 if matrix else max(1, len(baselines))

    fig = plt.figure(figsize=(12, 0.42 * (len(agents) + bottom_rows) + 2.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[len(agents) + 1.6, bottom_rows + 1.6])
    axes = top.subplots(1, len(PANELS), sharey=True)
    if agents:
        draw_interval_panels(axes, aggregate, agents)
    else:
        for ax in axes:
            ax.set_visible(False)
        plotting.no_data(top, top.add_subplot(), "no agent besides the references has "
                                                 "normalised scores")
    if matrix:
        ax = bottom.subplots(1, 1)
    else:  # bars on the left two thirds: as compact as the panels above
        ax, spare = bottom.subplots(1, 2, width_ratios=[2, 1])
        spare.set_visible(False)
    if matrix and len(agents) >= 2:
        draw_improvement_matrix(bottom, ax, improvement, agents)
    elif not matrix and focus in agents and baselines:
        draw_improvement_bars(ax, improvement, focus, baselines)
    else:
        plotting.no_data(bottom, ax, f"probability of improvement: needs {focus} and another "
                                     "agent with normalised scores" if not matrix else
                                     "probability of improvement: needs two agents")
    fig.suptitle(envs_title(used, excluded), fontsize=10)
    if snakemake.params.missing:
        fig.text(0.01, 0.0, f"partial results: {len(snakemake.params.missing)} run(s) missing",
                 fontsize=9, color="firebrick")
    return fig


main = plotting.script_main(build)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by snakemake's `script:`)
