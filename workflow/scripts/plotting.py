"""Look of every figure: agent colours, line styles and order, labels with units, saving.

One place, so an agent has the same colour and legend position in every figure. Agents not
implemented yet already have theirs, so a baseline that lands changes no figure script.
"""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

# legend order: the agent of the paper, the baselines, then the two references
AGENT_ORDER = ["trmrl", "rl2", "maml", "pearl", "varibad", "oracle", "memoryless"]
AGENT_LABELS = {"trmrl": "TrMRL", "rl2": "RL²", "maml": "MAML-TRPO", "pearl": "PEARL",
                "varibad": "VariBAD", "oracle": "Oracle (task observed)",
                "memoryless": "Memoryless (no context)"}
_COLORBLIND = sns.color_palette("colorblind")
AGENT_COLOURS = {"trmrl": _COLORBLIND[3], "rl2": _COLORBLIND[0], "maml": _COLORBLIND[2],
                 "pearl": _COLORBLIND[4], "varibad": _COLORBLIND[1],
                 "oracle": (0.25, 0.25, 0.25), "memoryless": (0.6, 0.6, 0.6)}
# the references bound the score: dashed from above, dotted from below
AGENT_LINESTYLES = {"oracle": (0, (5, 2)), "memoryless": (0, (1, 1.5))}
AGENT_MARKERS = {"trmrl": "o", "rl2": "s", "maml": "^", "pearl": "D", "varibad": "v",
                 "oracle": "P", "memoryless": "X"}

METRIC_LABELS = {"return": "Return per episode", "success_rate": "Success rate (%)"}
EPISODE_LABEL = "Episode in the trial"


def setup() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)
    plt.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42,  # editable text in PDFs
                         "savefig.bbox": "tight", "axes.titleweight": "bold"})


def ordered(agents) -> list[str]:
    """Agents in legend order (names outside DESIGN.md's list go last)."""
    agents = list(dict.fromkeys(agents))
    return sorted(agents, key=lambda a: (AGENT_ORDER.index(a) if a in AGENT_ORDER else 99, a))


def agent_style(agent: str) -> dict:
    return {"color": AGENT_COLOURS.get(agent, "black"), "label": AGENT_LABELS.get(agent, agent),
            "linestyle": AGENT_LINESTYLES.get(agent, "-"), "marker": AGENT_MARKERS.get(agent)}


def scale(metric: str) -> float:
    """Success rates are plotted in percent."""
    return 100.0 if metric == "success_rate" else 1.0


def steps_unit(max_steps: float) -> tuple[float, str]:
    """(divisor, axis label) for env steps: millions at paper scale, thousands below."""
    if max_steps >= 1e6:
        return 1e6, "Environment steps (millions)"
    return 1e3, "Environment steps (thousands)"


def wrap(text: str, width: int = 28) -> str:
    """Long axis labels (e.g. a task parameter's description) on several lines."""
    return textwrap.fill(text, width)


def set_metric_axis(ax, metric: str, prefix: str = "") -> None:
    """Label the score axis; success rates always span 0-100%."""
    label = METRIC_LABELS[metric]
    ax.set_ylabel(f"{prefix} {label[0].lower()}{label[1:]}" if prefix else label)
    if metric == "success_rate":
        ax.set_ylim(-3, 103)


def panel_grid(n: int, max_cols: int = 3, width: float = 3.6, height: float = 2.9,
               **kwargs) -> tuple[plt.Figure, np.ndarray]:
    cols = max(1, min(max_cols, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + 1.8, height * rows),
                             layout="constrained", squeeze=False, **kwargs)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def line_with_band(ax, x, mean, low, high, agent: str, markers: bool = False) -> None:
    """Mean as a line, the 95% CI as a band (seeds where the CI is undefined: no band)."""
    style = agent_style(agent)
    marker = style.pop("marker") if markers else None
    style.pop("marker", None)
    ax.plot(x, mean, marker=marker, markersize=4, linewidth=1.6, **style)
    ax.fill_between(x, low, high, color=style["color"], alpha=0.2, linewidth=0)


def draw_episodes(ax, panel, show_n: bool) -> None:
    """Score per episode of the trial (1-based), one line per agent (figures 2 and 3)."""
    metric = panel["metric"].iloc[0]
    k = scale(metric)
    for agent in ordered(panel["agent"]):
        line = panel[panel["agent"] == agent].sort_values("episode")
        x = line["episode"] + 1
        line_with_band(ax, x, line["mean"] * k, line["ci_low"] * k, line["ci_high"] * k, agent,
                       markers=True)
        if show_n:
            for xi, yi, n in zip(x, line["mean"] * k, line["n"]):
                annotate_n(ax, xi, yi, n, agent_style(agent)["color"])
    ax.set_xticks(sorted((panel["episode"] + 1).unique()))
    ax.set_xlabel(EPISODE_LABEL)
    set_metric_axis(ax, metric)


def legend_outside(fig, axes, title: str | None = None) -> None:
    """One legend for the figure, right of the panels (never over the data)."""
    handles, labels = {}, []
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    if handles:
        fig.legend([handles[label] for label in labels], labels, loc="outside right upper",
                   title=title, frameon=False)


def annotate_n(ax, x, y, n, colour) -> None:
    """`n=…` at a point: used when allow_partial lets points rest on fewer seeds."""
    ax.annotate(f"n={int(n)}", (x, y), xytext=(3, 3), textcoords="offset points",
                fontsize=7, color=colour)


def partial_note(fig, missing: list[str]) -> None:
    if missing:
        fig.suptitle(f"partial results: {len(missing)} run(s) missing (n = seeds per point)",
                     fontsize=9, color="firebrick")


def no_data(fig, ax, message: str) -> None:
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)


def save(fig, output) -> None:
    """PDF (papers) and PNG (the HTML report)."""
    fig.savefig(output.pdf)
    fig.savefig(output.png, dpi=200)
    plt.close(fig)
