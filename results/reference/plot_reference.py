"""Test-task return vs env steps of the committed reference runs (cheetah-vel).

    python results/reference/plot_reference.py   # writes results/reference/cheetah-vel.{png,pdf}
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

HERE = Path(__file__).parent
RUNS = HERE / "runs" / "cheetah-vel"
PANELS = {  # panel title -> {run directory: legend}
    "TrMRL and the references (defaults v3)": {
        "trmrl": "TrMRL, defaults v3",
        "trmrl--v1": "TrMRL, paper config v1 (diverged at 4.6M)",
        "trmrl--v1-resumed": "TrMRL v1, resumed at 4.5M with clip, at 7.6M with target_kl",
        "oracle": "oracle",
        "memoryless": "memoryless",
    },
    "oracle settings (the diagnosis)": {
        "oracle--v1": "v1: lr 3e-4, clip 0.2, std 0.5, raw obs",
        "oracle--v1-normalized-obs": "v1 + obs scaling",
        "oracle--v1-gamma99-normalized-obs": "v1 + obs scaling, gamma 0.99, lambda 0.95",
        "oracle--raw-obs": "TrMRL's lr/clip/std, raw obs",
        "oracle--lr1e-4-normalized-obs": "TrMRL's clip/std, lr 1e-4, obs scaling",
        "oracle": "v3: TrMRL's lr/clip/std, obs scaling",
    },
}


def test_curve(name: str) -> pd.DataFrame | None:
    path = RUNS / name / "seed0" / "progress.csv"
    if not path.exists():
        return None
    table = pd.read_csv(path)
    return table[table["split"] == "test"].groupby("env_steps", as_index=False)["return"].mean()


def main() -> None:
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(1, len(PANELS), figsize=(12, 4.2), sharey=True)
    for ax, (title, labels) in zip(axes, PANELS.items()):
        frames = [curve.assign(run=label) for name, label in labels.items()
                  if (curve := test_curve(name)) is not None]
        sns.lineplot(data=pd.concat(frames), x="env_steps", y="return", hue="run", ax=ax,
                     linewidth=1.0)
        ax.set_title(title)
        ax.set_xlabel("environment steps")
        ax.legend(loc="lower right", frameon=True, fontsize=6.5, title=None)
    axes[0].set_ylabel("test return per episode\n(20 held-out tasks, mean of 2 episodes)")
    fig.suptitle("cheetah-vel, seed 0, deterministic evaluation", fontsize=10)
    fig.tight_layout()
    for suffix in ("png", "pdf"):
        fig.savefig(HERE / f"cheetah-vel.{suffix}", dpi=150)


if __name__ == "__main__":
    main()
