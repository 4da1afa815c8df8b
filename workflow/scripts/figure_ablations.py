"""Figure 4, ablations of TrMRL (on cheetah-vel in the paper): one panel per study
(initialisation: T-Fixup x LayerNorm, layers, working-memory length, heads), one meta-training
curve per variant: mean and 95% bootstrap CI over seeds. The main run's variant is bold."""

import pandas as pd
import plotting


def build(snakemake):
    plotting.setup()
    summary = pd.read_csv(snakemake.input.summary)
    studies = list(dict.fromkeys(summary.sort_values("order")["study"]))
    divisor, steps_label = plotting.steps_unit(summary["env_steps"].max() if studies else 0)
    fig, axes = plotting.panel_grid(max(1, len(studies)), max_cols=2, width=3.9, height=3.6)
    if not studies:
        plotting.no_data(fig, axes.flat[0], "no finished runs yet")
    for ax, study in zip(axes.flat, studies):
        panel = summary[summary["study"] == study].sort_values(["order", "env_steps"])
        variants = list(dict.fromkeys(panel["variant"]))
        metric = panel["metric"].iloc[0]
        k = plotting.scale(metric)
        for index, variant in enumerate(variants):
            line = panel[panel["variant"] == variant]
            x = line["env_steps"] / divisor
            main_run = bool(line["default"].iloc[0])
            style = plotting.variant_style(index)
            style["label"] = line["label"].iloc[0] + (" (main run)" if main_run else "")
            plotting.line_with_band(
                ax, x, line["mean"] * k, line["ci_low"] * k, line["ci_high"] * k, style,
                markevery=plotting.staggered_markers(index, len(variants), len(line)))
            if main_run:  # bold: the variant that is the main run of figure 1
                ax.lines[-1].set_linewidth(2.6)
            if snakemake.params.missing:
                plotting.annotate_n(ax, x.iloc[-1], line["mean"].iloc[-1] * k, line["n"].iloc[-1],
                                    style["color"])
        agent = plotting.label(panel["agent"].iloc[0], short=True)
        ax.set(title=f"{study} ({agent} on {panel['env'].iloc[0]})", xlabel=steps_label)
        plotting.set_metric_axis(ax, metric)
        # below its panel: a legend to the right would push the panels apart
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False, fontsize=8,
                  ncols=2, handlelength=3.2)
    plotting.partial_note(fig, snakemake.params.missing)
    return fig


main = plotting.script_main(build)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by snakemake's `script:`)
