"""Look of every figure: agent colours, line styles, markers and order, labels with units,
saving.

One place, so an agent looks the same in every figure. Agents not implemented yet already
have their style, so a baseline that lands changes no figure script. Colours are the
Okabe-Ito palette (distinguishable with every common colour-vision deficiency); each agent
also has its own line style and marker, so that the figures read in greyscale too.
"""

from __future__ import annotations

import re
import textwrap

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

# Okabe & Ito (2008), "Color Universal Design": the 8 colours as hex
OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9",
             "bluish_green": "#009E73", "yellow": "#F0E442", "blue": "#0072B2",
             "vermillion": "#D55E00", "reddish_purple": "#CC79A7"}

# legend order: the agent of the paper, the baselines, then the two references
AGENT_ORDER = ["trmrl", "rl2", "maml", "pearl", "varibad", "oracle", "memoryless"]
REFERENCES = ("oracle", "memoryless")
AGENT_LABELS = {"trmrl": "TrMRL", "rl2": "RL²", "maml": "MAML-TRPO", "pearl": "PEARL",
                "varibad": "VariBAD", "oracle": "Oracle (task observed)",
                "memoryless": "Memoryless (no context)"}
# TrMRL's vermillion has no orange next to it (the two are hard to tell apart); the
# references are black and grey, so they read as bounds rather than competitors
AGENT_COLOURS = {"trmrl": OKABE_ITO["vermillion"], "rl2": OKABE_ITO["blue"],
                 "maml": OKABE_ITO["bluish_green"], "pearl": OKABE_ITO["reddish_purple"],
                 "varibad": OKABE_ITO["sky_blue"], "oracle": OKABE_ITO["black"],
                 "memoryless": "#8C8C8C"}
AGENT_LINESTYLES = {"trmrl": "-", "rl2": (0, (6, 2)), "maml": (0, (5, 1.5, 1, 1.5)),
                    "pearl": (0, (2, 1.2)), "varibad": (0, (7, 1.5, 1, 1.5, 1, 1.5)),
                    "oracle": (0, (9, 3)), "memoryless": (0, (1, 1.5))}
AGENT_MARKERS = {"trmrl": "o", "rl2": "s", "maml": "^", "pearl": "D", "varibad": "v",
                 "oracle": "P", "memoryless": "X"}
# variants of one study (figure 4): the palette's remaining colours, each with a line style
VARIANT_COLOURS = [OKABE_ITO[name] for name in ("vermillion", "blue", "bluish_green",
                                                 "reddish_purple", "orange", "sky_blue", "black")]
VARIANT_LINESTYLES = ["-", (0, (6, 2)), (0, (5, 1.5, 1, 1.5)), (0, (2, 1.2)),
                      (0, (7, 1.5, 1, 1.5, 1, 1.5)), (0, (9, 3)), (0, (1, 1.5))]

BAND_ALPHA = 0.12  # light enough that every mean line stays visible through all the bands
METRIC_LABELS = {"return": "Return per episode", "success_rate": "Success rate (%)"}
EPISODE_LABEL = "Episode in the trial"
DODGE = 0.07  # horizontal offset between agents at an episode index (figures 2, 3)
TIE_TOLERANCE = 1e-9  # curves whose means differ by less are the same curve (noted in the panel)


def setup() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)
    plt.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42,  # editable text in PDFs
                         "savefig.bbox": "tight", "axes.titleweight": "bold"})


def ordered(agents) -> list[str]:
    """Agents in legend order (names outside DESIGN.md's list go last)."""
    agents = list(dict.fromkeys(agents))
    return sorted(agents, key=lambda a: (AGENT_ORDER.index(a) if a in AGENT_ORDER else 99, a))


def label(agent: str, short: bool = False) -> str:
    text = AGENT_LABELS.get(agent, agent)
    return text.split(" (")[0] if short else text


def agent_style(agent: str) -> dict:
    return {"color": AGENT_COLOURS.get(agent, "black"), "label": label(agent),
            "linestyle": AGENT_LINESTYLES.get(agent, "-"), "marker": AGENT_MARKERS.get(agent, "o")}


def variant_style(index: int) -> dict:
    return {"color": VARIANT_COLOURS[index % len(VARIANT_COLOURS)],
            "linestyle": VARIANT_LINESTYLES[index % len(VARIANT_LINESTYLES)],
            "marker": "osD^vPX"[index % 7]}


def scale(metric: str) -> float:
    """Success rates are plotted in percent."""
    return 100.0 if metric == "success_rate" else 1.0


def steps_unit(max_steps: float) -> tuple[float, str]:
    """(divisor, axis label) for env steps: millions at paper scale, thousands below."""
    if max_steps >= 1e6:
        return 1e6, "Environment steps (millions)"
    return 1e3, "Environment steps (thousands)"


def wrap(text: str, width: int = 30) -> str:
    """Long axis labels (e.g. a task parameter's description) on several lines."""
    return textwrap.fill(text, width)


def task_param_label(env_info: dict, integer: bool = False) -> str:
    """The env's task parameter as an axis label: capitalised, units kept. An index (integer
    values) loses its range note, which describes the split and not the tasks plotted."""
    text = env_info["task_param"]
    if integer:
        text = re.sub(r"\s*\(\d+-\d+[^)]*\)", "", text)
    return wrap(text[0].upper() + text[1:])


def set_metric_axis(ax, metric: str) -> None:
    """The score axis, labelled the same in every figure; success rates span 0-100%."""
    ax.set_ylabel(METRIC_LABELS[metric])
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


def line_with_band(ax, x, mean, low, high, style: dict, markevery=None) -> None:
    """Mean as a line over a light 95% CI band (no band where the CI is undefined). Bands sit
    below every line (zorder), so no band hides another agent's mean."""
    style = dict(style)
    marker = style.pop("marker", None)
    ax.fill_between(x, low, high, color=style["color"], alpha=BAND_ALPHA, linewidth=0, zorder=1)
    ax.plot(x, mean, marker=marker if markevery is not None else None, markevery=markevery,
            markersize=4.5, markeredgecolor="white", markeredgewidth=0.5, linewidth=1.6,
            zorder=3, **style)


def staggered_markers(position: int, count: int, points: int) -> tuple[int, int]:
    """markevery for the ``position``-th of ``count`` lines: each line marks different points,
    so lines on top of each other still show every agent's marker."""
    every = max(1, min(count, points // 3 or 1))
    return position % every, every


def note_ties(ax, curves: dict[str, np.ndarray]) -> None:
    """Name the agents whose mean curves coincide (e.g. four agents at 0% success), in the
    panel, so that a line hidden under another is still accounted for."""
    groups: list[list[str]] = []
    for agent, values in curves.items():
        for group in groups:
            other = curves[group[0]]
            if len(other) == len(values) and np.allclose(other, values, atol=TIE_TOLERANCE,
                                                          equal_nan=True):
                group.append(agent)
                break
        else:
            groups.append([agent])
    lines = [" = ".join(label(a, short=True) for a in group) for group in groups if len(group) > 1]
    if lines:
        ax.text(0.98, 0.03, "same curve:\n" + "\n".join(lines), transform=ax.transAxes,
                ha="right", va="bottom", fontsize=7, zorder=5,
                bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": "0.7",
                      "alpha": 0.9})


def draw_episodes(ax, panel, show_n: bool) -> None:
    """Score per episode of the trial (1-based), one line per agent (figures 2 and 3); agents
    are dodged sideways a little so that equal scores stay visible."""
    metric = panel["metric"].iloc[0]
    k = scale(metric)
    agents = ordered(panel["agent"])
    curves = {}
    for position, agent in enumerate(agents):
        line = panel[panel["agent"] == agent].sort_values("episode")
        x = line["episode"] + 1 + DODGE * (position - (len(agents) - 1) / 2)
        line_with_band(ax, x, line["mean"] * k, line["ci_low"] * k, line["ci_high"] * k,
                       agent_style(agent), markevery=1)
        curves[agent] = line["mean"].to_numpy(float)
        if show_n:
            for xi, yi, n in zip(x, line["mean"] * k, line["n"]):
                annotate_n(ax, xi, yi, n, agent_style(agent)["color"])
    note_ties(ax, curves)
    ax.set_xticks(sorted((panel["episode"] + 1).unique()))
    ax.set_xlabel(EPISODE_LABEL)
    set_metric_axis(ax, metric)


def legend_outside(fig, axes, title: str | None = None) -> None:
    """One legend for the figure, right of the panels (never over the data)."""
    handles, labels = {}, []
    for ax in np.ravel(axes):
        for handle, text in zip(*ax.get_legend_handles_labels()):
            if text not in handles:
                handles[text] = handle
                labels.append(text)
    if handles:
        fig.legend([handles[text] for text in labels], labels, loc="outside right upper",
                   title=title, frameon=False, handlelength=3.2)


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


def finish(fig, axes, missing):
    """The shared legend below the panels and the note of missing runs; returns ``fig``."""
    legend_outside(fig, axes)
    partial_note(fig, missing)
    return fig


def script_main(build):
    """A figure script's ``main(snakemake)``: ``build`` the figure and save it."""
    def main(snakemake):
        save(build(snakemake), snakemake.output)
    return main
