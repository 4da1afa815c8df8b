"""Figure 5, latent map: the memories agents act on (e.g. TrMRL's episodic memory, RL²'s GRU
state) at sampled steps of the fast-adaptation trials on the 20 test tasks, projected on their
first two principal components and coloured by the task parameter; one panel per agent with a
memory x env."""

from pathlib import Path

import matplotlib as mpl
import numpy as np
import plotting

CMAP = mpl.colormaps["viridis"]  # perceptually uniform and colour-blind safe


def principal_components(memory: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2-D PCA by SVD: (coordinates [M, 2], fraction of variance of each component)."""
    centred = memory - memory.mean(axis=0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    variance = singular**2 / max((singular**2).sum(), 1e-12)
    return centred @ components[:2].T, variance[:2]


def variance_label(component: int, share: float) -> str:
    """'PC 2 (0.4% of variance)': a small share is printed, not rounded to 0%."""
    text = f"{share:.0%}" if share >= 0.1 else f"{share:.1%}" if share >= 0.001 else "<0.1%"
    return f"PC {component} ({text} of variance)"


def first_seed_latents(runs: list[dict]) -> dict[tuple[str, str], dict]:
    """(agent, env) -> the latents of its lowest seed, for agents that have a memory."""
    chosen = {}
    for run in sorted(runs, key=lambda r: r["seed"]):
        key = (run["agent"], run["env"])
        if key in chosen:
            continue
        with np.load(Path(run["path"]) / "eval" / "latents.npz") as data:
            arrays = {name: data[name] for name in data.files}
        if arrays["memory"].size:
            chosen[key] = {**arrays, "seed": run["seed"]}
    return chosen


def scatter_by_task(fig, ax, coordinates, values, env_info) -> None:
    """Points coloured by the task parameter: a task index (integer values) gets one colour
    per integer and a colourbar with integer ticks, a continuous parameter a continuous one."""
    integer = bool(np.all(np.mod(values, 1) == 0))
    if integer:
        levels = np.arange(values.min(), values.max() + 2) - 0.5
        norm = mpl.colors.BoundaryNorm(levels, CMAP.N)
    else:
        norm = None
    points = ax.scatter(coordinates[:, 0], coordinates[:, 1], c=values, s=6, cmap=CMAP,
                        norm=norm, alpha=0.75, linewidths=0, rasterized=True)
    bar = fig.colorbar(points, ax=ax, label=plotting.task_param_label(env_info, integer),
                       shrink=0.9)
    if integer:
        bar.locator = mpl.ticker.MaxNLocator(nbins=6, integer=True)
        bar.update_ticks()
        bar.minorticks_off()


def build(snakemake):
    plotting.setup()
    envs_info = snakemake.params.analysis["envs"]
    latents = first_seed_latents(snakemake.params.runs)
    agent_order = plotting.ordered(agent for agent, _ in latents)
    env_order = list(envs_info)
    panels = sorted(latents, key=lambda key: (agent_order.index(key[0]), env_order.index(key[1])))
    fig, axes = plotting.panel_grid(max(1, len(panels)), width=3.6, height=3.2)
    if not panels:
        plotting.no_data(fig, axes.flat[0], "no agent with an episodic memory was evaluated")
    for ax, (agent, env) in zip(axes.flat, panels):
        data = latents[(agent, env)]
        coordinates, variance = principal_components(data["memory"].astype(float))
        scatter_by_task(fig, ax, coordinates, np.asarray(data["task_param"], float),
                        envs_info[env])
        ax.set(title=f"{plotting.label(agent, short=True)} on {env} (seed {data['seed']})",
               xlabel=variance_label(1, variance[0]),
               ylabel=variance_label(2, variance[1]) if len(variance) > 1 else "PC 2")
    return fig


main = plotting.script_main(build)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by snakemake's `script:`)
