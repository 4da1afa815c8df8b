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
LABELS = {  # run directory -> legend
    "trmrl": "TrMRL, paper config (diverged at 4.6M)",
    "trmrl--clip1": "TrMRL, resumed at 4.5M with grad-norm clip 1.0",
    "oracle": "oracle",
    "memoryless": "memoryless",
    "oracle--normalized-obs": "oracle, observations normalised (stopped at 1.8M)",
    "memoryless--normalized-obs": "memoryless, observations normalised (stopped at 1.8M)",
}


def main() -> None:
    frames = []
    for name, label in LABELS.items():
        path = RUNS / name / "seed0" / "progress.csv"
        if not path.exists():
            continue
        table = pd.read_csv(path)
        test = table[table["split"] == "test"].groupby("env_steps", as_index=False)["return"].mean()
        frames.append(test.assign(run=label))
    data = pd.concat(frames)
    sns.set_theme(style="whitegrid", context="paper")
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    sns.lineplot(data=data, x="env_steps", y="return", hue="run", ax=ax, linewidth=1.2)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("test return per episode\n(20 held-out tasks, mean of 2 episodes)")
    ax.set_title("cheetah-vel, seed 0, deterministic evaluation")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=7)
    fig.tight_layout()
    for suffix in ("png", "pdf"):
        fig.savefig(HERE / f"cheetah-vel.{suffix}", dpi=150)


if __name__ == "__main__":
    main()
