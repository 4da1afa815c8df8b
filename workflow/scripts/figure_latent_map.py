"""Figure 5, latent map: the memories agents act on (TrMRL's episodic memory, RL²'s GRU state)
at sampled steps of the fast-adaptation trials on the 20 test tasks, projected on their first
two principal components and coloured by the task parameter; one panel per agent with a
memory x env."""

from pathlib import Path

import numpy as np
import plotting


def principal_components(memory: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2-D PCA by SVD: (coordinates [M, 2], fraction of variance of each component)."""
    centred = memory - memory.mean(axis=0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    variance = singular**2 / max((singular**2).sum(), 1e-12)
    return centred @ components[:2].T, variance[:2]


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


def main(snakemake):
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
        points = ax.scatter(coordinates[:, 0], coordinates[:, 1], c=data["task_param"], s=6,
                            cmap="viridis", alpha=0.7, linewidths=0, rasterized=True)
        fig.colorbar(points, ax=ax, label=plotting.wrap(envs_info[env]["task_param"]), shrink=0.9)
        ax.set(title=f"{plotting.AGENT_LABELS.get(agent, agent)} on {env} (seed {data['seed']})",
               xlabel=f"PC 1 ({variance[0]:.0%} of variance)",
               ylabel=f"PC 2 ({variance[1]:.0%} of variance)" if len(variance) > 1 else "PC 2")
    plotting.save(fig, snakemake.output)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by snakemake's `script:`)
