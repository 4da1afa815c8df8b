"""Figure 4, ablations of TrMRL (on cheetah-vel in the paper): one panel per study
(initialisation: T-Fixup x LayerNorm, layers, working-memory length, heads), one meta-training
curve per variant: mean and 95% bootstrap CI over seeds. The main run's variant is bold."""

import pandas as pd
import plotting
import seaborn as sns


def main(snakemake):
    plotting.setup()
    summary = pd.read_csv(snakemake.input.summary)
    studies = list(dict.fromkeys(summary.sort_values("order")["study"]))
    divisor, steps_label = plotting.steps_unit(summary["env_steps"].max() if studies else 0)
    fig, axes = plotting.panel_grid(max(1, len(studies)), max_cols=2, width=4.2)
    if not studies:
        plotting.no_data(fig, axes.flat[0], "no finished runs yet")
    for ax, study in zip(axes.flat, studies):
        panel = summary[summary["study"] == study].sort_values(["order", "env_steps"])
        variants = list(dict.fromkeys(panel["variant"]))
        colours = sns.color_palette("viridis", len(variants))
        metric = panel["metric"].iloc[0]
        k = plotting.scale(metric)
        for colour, variant in zip(colours, variants):
            line = panel[panel["variant"] == variant]
            x = line["env_steps"] / divisor
            main_run = bool(line["default"].iloc[0])
            label = line["label"].iloc[0] + (" (main run)" if main_run else "")
            ax.plot(x, line["mean"] * k, color=colour, label=label,
                    linewidth=2.6 if main_run else 1.4)
            ax.fill_between(x, line["ci_low"] * k, line["ci_high"] * k, color=colour, alpha=0.15,
                            linewidth=0)
            if snakemake.params.missing:
                plotting.annotate_n(ax, x.iloc[-1], line["mean"].iloc[-1] * k, line["n"].iloc[-1],
                                    colour)
        agent = plotting.AGENT_LABELS.get(panel["agent"].iloc[0], panel["agent"].iloc[0])
        ax.set(title=f"{study} ({agent} on {panel['env'].iloc[0]})", xlabel=steps_label)
        plotting.set_metric_axis(ax, metric, prefix="Test")
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False, fontsize=8)
    plotting.partial_note(fig, snakemake.params.missing)
    plotting.save(fig, snakemake.output)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by snakemake's `script:`)
