"""Figure 1, meta-training curves: test-task return (Meta-World: success rate) against env
steps, one panel per env, one line per agent: mean and 95% bootstrap CI over seeds."""

import pandas as pd
import plotting


def build(snakemake):
    plotting.setup()
    summary = pd.read_csv(snakemake.input.summary)
    envs = [env for env in snakemake.params.analysis["envs"] if env in set(summary["env"])]
    divisor, steps_label = plotting.steps_unit(summary["env_steps"].max() if envs else 0)
    fig, axes = plotting.panel_grid(max(1, len(envs)))
    if not envs:
        plotting.no_data(fig, axes.flat[0], "no finished runs yet")
    for ax, env in zip(axes.flat, envs):
        panel = summary[summary["env"] == env]
        metric = panel["metric"].iloc[0]
        k = plotting.scale(metric)
        agents = plotting.ordered(panel["agent"])
        curves = {}
        for position, agent in enumerate(agents):
            line = panel[panel["agent"] == agent].sort_values("env_steps")
            x = line["env_steps"] / divisor
            plotting.line_with_band(
                ax, x, line["mean"] * k, line["ci_low"] * k, line["ci_high"] * k,
                plotting.agent_style(agent),
                markevery=plotting.staggered_markers(position, len(agents), len(line)))
            curves[agent] = line["mean"].to_numpy(float)
            if snakemake.params.missing:
                plotting.annotate_n(ax, x.iloc[-1], line["mean"].iloc[-1] * k, line["n"].iloc[-1],
                                    plotting.agent_style(agent)["color"])
        plotting.note_ties(ax, curves)
        ax.set(title=env, xlabel=steps_label)
        plotting.set_metric_axis(ax, metric)
    return plotting.finish(fig, axes, snakemake.params.missing)


main = plotting.script_main(build)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by snakemake's `script:`)
