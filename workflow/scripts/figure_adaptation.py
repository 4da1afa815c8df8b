"""Figure 2, fast adaptation: return (Meta-World: success rate) in each of 6 consecutive
episodes on 20 held-out test tasks, memory kept across episodes, deterministic actions; one
panel per env, one line per agent: mean and 95% bootstrap CI over seeds."""

import pandas as pd
import plotting


def build(snakemake):
    plotting.setup()
    summary = pd.read_csv(snakemake.input.summary)
    envs = [env for env in snakemake.params.analysis["envs"] if env in set(summary["env"])]
    fig, axes = plotting.panel_grid(max(1, len(envs)))
    if not envs:
        plotting.no_data(fig, axes.flat[0], "no finished runs yet")
    for ax, env in zip(axes.flat, envs):
        plotting.draw_episodes(ax, summary[summary["env"] == env], bool(snakemake.params.missing))
        ax.set_title(f"{env}: test tasks")
    return plotting.finish(fig, axes, snakemake.params.missing)


main = plotting.script_main(build)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by snakemake's `script:`)
