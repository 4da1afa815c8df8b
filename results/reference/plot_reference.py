"""Test-task return vs env steps of the committed reference runs.

    python results/reference/plot_reference.py   # writes results/reference/<env>.{png,pdf}
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

HERE = Path(__file__).parent
FIGURES = {  # env -> {panel title -> {run directory: legend}}
    "cheetah-vel": {
        "agents (current defaults)": {
            "trmrl": "TrMRL, defaults v3",
            "rl2": "RL2, defaults v1",
            "varibad": "VariBAD, v2 + init_std 0.2 (= v3)",
            "oracle": "oracle",
            "memoryless": "memoryless",
        },
        "MAML-TRPO and PEARL": {
            "maml": "MAML-TRPO, defaults v2",
            "maml--v1": "MAML-TRPO v1: no action scale",
            "pearl": "PEARL, defaults v1 (1M steps)",
            "oracle": "oracle",
            "memoryless": "memoryless",
        },
        "TrMRL and VariBAD settings": {
            "trmrl--v1": "TrMRL, paper config v1 (diverged at 4.6M)",
            "trmrl--v1-resumed": "TrMRL v1, resumed at 4.5M with clip, at 7.6M with target_kl",
            "trmrl--paper-20m": "TrMRL v3, 20M steps (13 min 06 s on one GPU)",
            "trmrl--large-batch": "TrMRL v3, large-batch setting (20M steps in 3 min 46 s)",
            "trmrl--large-batch-no-pipeline": "the same without pipeline_sampling (4 min 57 s)",
            "trmrl--large-batch-256": "TrMRL v3, 256 trials (20M steps in 5 min 51 s)",
            "varibad--v1": "VariBAD v1: init_std 1.0, raw rewards",
            "varibad": "VariBAD v2 + init_std 0.2 (= v3)",
        },
        "oracle settings (the diagnosis)": {
            "oracle--v1": "v1: lr 3e-4, clip 0.2, std 0.5, raw obs",
            "oracle--v1-normalized-obs": "v1 + obs scaling",
            "oracle--v1-gamma99-normalized-obs": "v1 + obs scaling, gamma 0.99, lambda 0.95",
            "oracle--raw-obs": "TrMRL's lr/clip/std, raw obs",
            "oracle--lr1e-4-normalized-obs": "TrMRL's clip/std, lr 1e-4, obs scaling",
            "oracle": "v3: TrMRL's lr/clip/std, obs scaling",
        },
    },
    "cheetah-dir": {
        "agents": {
            "rl2": "RL2, defaults v1",
            "varibad--v1": "VariBAD v1 (raw rewards)",
            "oracle": "oracle, defaults v3",
            "memoryless": "memoryless, defaults v3",
        },
        "MAML-TRPO and PEARL": {
            "maml": "MAML-TRPO, defaults v2",
            "maml--v1": "MAML-TRPO v1: no action scale",
            "pearl": "PEARL, defaults v1 (1M steps)",
            "rl2": "RL2, defaults v1",
            "memoryless": "memoryless, defaults v3",
        },
    },
}


def test_curve(env: str, name: str) -> pd.DataFrame | None:
    """The mean test return per evaluation of a reference run, or of an exploratory variant
    (``agent--variant``, kept under exploration/)."""
    folder = HERE / "exploration" if "--" in name else HERE
    path = folder / "runs" / env / name / "seed0" / "progress.csv"
    if not path.exists():
        return None
    table = pd.read_csv(path)
    return table[table["split"] == "test"].groupby("env_steps", as_index=False)["return"].mean()


def main() -> None:
    sns.set_theme(style="whitegrid", context="paper")
    for env, panels in FIGURES.items():
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), sharey=True,
                                 squeeze=False)
        for ax, (title, labels) in zip(axes[0], panels.items()):
            frames = [curve.assign(run=label) for name, label in labels.items()
                      if (curve := test_curve(env, name)) is not None]
            sns.lineplot(data=pd.concat(frames), x="env_steps", y="return", hue="run", ax=ax,
                         linewidth=1.0)
            ax.set_title(title)
            ax.set_xlabel("environment steps")
            if "PEARL" in title:  # its 1M steps next to the others' 10M: a log axis above 100k
                ax.set_xscale("symlog", linthresh=1e5)
                ax.set_xlim(left=0)
                ax.set_xlabel("environment steps (log scale above 100k)")
            ax.legend(loc="upper left" if "PEARL" in title else "lower right", frameon=True,
                      fontsize=6.5, title=None)
        axes[0, 0].set_ylabel("test return per episode\n(20 held-out tasks, mean of 2 episodes)")
        fig.suptitle(f"{env}, seed 0, deterministic evaluation", fontsize=10)
        fig.tight_layout()
        for suffix in ("png", "pdf"):
            fig.savefig(HERE / f"{env}.{suffix}", dpi=150)
        plt.close(fig)


if __name__ == "__main__":
    main()
