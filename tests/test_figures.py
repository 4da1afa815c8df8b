"""Figure scripts on a tiny fixture (issue 23): no golden images; the structure of each
figure is read back from matplotlib objects (panels, legend entries, labels, one line per
agent), so a figure that silently drops an agent or mislabels an axis fails here."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from test_workflow import (  # noqa: F401 (fixtures are used by name)
    ENV_INFO,
    FIGURE_SETTINGS,
    analysis,
    fixture_tables,
    job,
    scripts_on_path,
)

AGENTS = ["trmrl", "rl2", "oracle", "memoryless"]
LABELS = ["TrMRL", "RL²", "Oracle (task observed)", "Memoryless (no context)"]


def build(module, tmp_path, inputs, figures=FIGURE_SETTINGS, missing=(), runs=()):
    params = {"missing": list(missing), "analysis": analysis(), "runs": list(runs),
              "figures": figures}
    fig = module.build(job(tmp_path, module.__name__, inputs=inputs, params=params))
    fig.canvas.draw()  # layout and colourbar ticks as saved
    return fig


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def panels(fig) -> dict[str, plt.Axes]:
    """Visible panels by title (colourbars have none)."""
    return {ax.get_title(): ax for ax in fig.axes if ax.get_visible() and ax.get_title()}


def agent_lines(ax) -> dict[str, object]:
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def figure_legend(fig) -> list[str]:
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def test_training_curves_draw_every_agent_in_every_panel(tmp_path, fixture_tables):
    import figure_training_curves

    fig = build(figure_training_curves, tmp_path, {"summary": fixture_tables.paths["curves"]})
    by_title = panels(fig)
    assert list(by_title) == ["cheetah-vel", "ml1-reach"]
    assert figure_legend(fig) == LABELS  # one legend, in the shared agent order
    for title, ax in by_title.items():
        lines = agent_lines(ax)
        assert list(lines) == LABELS
        assert all(len(line.get_xdata()) == 5 for line in lines.values())  # every grid point
        assert ax.get_xlabel() == "Environment steps (thousands)"
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 4 and all(band.get_alpha() <= 0.15 for band in bands)
    assert by_title["cheetah-vel"].get_ylabel() == "Return per episode"
    assert by_title["ml1-reach"].get_ylabel() == "Success rate (%)"
    # every agent its own colour and line style
    lines = agent_lines(by_title["cheetah-vel"]).values()
    assert len({line.get_color() for line in lines}) == 4
    # matplotlib has no public getter of a custom dash pattern
    assert len({str(line._unscaled_dash_pattern) for line in lines}) == 4


def test_tied_curves_stay_visible_and_are_named(tmp_path, scripts_on_path):
    import figure_training_curves

    rows = [(agent, "ml1-reach", steps, "success_rate", 2, level, level, level, level)
            for agent, level in [("trmrl", 0.5), ("rl2", 0.0), ("oracle", 0.0),
                                 ("memoryless", 0.0)]
            for steps in range(0, 1001, 100)]
    summary = tmp_path / "ties.csv"
    pd.DataFrame(rows, columns=["agent", "env", "env_steps", "metric", "n", "mean", "ci_low",
                                "ci_high", "iqm"]).to_csv(summary, index=False)
    fig = build(figure_training_curves, tmp_path, {"summary": str(summary)})
    ax = panels(fig)["ml1-reach"]
    texts = [text.get_text() for text in ax.texts]
    assert "same curve:\nRL² = Oracle = Memoryless" in texts
    # the three tied lines mark different points, so each one's markers show
    tied = [agent_lines(ax)[label] for label in LABELS[1:]]
    assert len({str(line.get_markevery()) for line in tied}) == 3
    assert len({line.get_marker() for line in tied}) == 3


def test_adaptation_dodges_agents_and_labels_episodes(tmp_path, fixture_tables):
    import figure_adaptation

    fig = build(figure_adaptation, tmp_path, {"summary": fixture_tables.paths["adaptation"]})
    by_title = panels(fig)
    assert list(by_title) == ["cheetah-vel: test tasks", "ml1-reach: test tasks"]
    ax = by_title["cheetah-vel: test tasks"]
    assert [tick for tick in ax.get_xticks()] == [1, 2, 3, 4, 5, 6]
    assert ax.get_xlabel() == "Episode in the trial"
    lines = agent_lines(ax)
    assert list(lines) == LABELS
    first_x = sorted(line.get_xdata()[0] for line in lines.values())
    assert len(set(first_x)) == 4 and first_x[-1] - first_x[0] < 0.5  # side by side at episode 1


def test_ood_figure_shows_only_the_ood_split(tmp_path, fixture_tables):
    import figure_ood

    t = fixture_tables.paths
    fig = build(figure_ood, tmp_path, {"ood": t["ood"], "ood_by_task": t["ood_by_task"]})
    by_title = panels(fig)
    assert list(by_title) == ["cheetah-vel: OOD tasks", "cheetah-vel: OOD, last episode"]
    by_task = by_title["cheetah-vel: OOD, last episode"]
    assert by_task.get_xlabel() == "Target velocity (m/s)"
    assert by_task.get_ylabel() == by_title["cheetah-vel: OOD tasks"].get_ylabel() \
        == "Return per episode"
    assert len(by_task.get_lines()) == 4  # a binned mean per agent
    assert figure_legend(fig) == LABELS


def test_ablations_one_panel_per_study_with_its_variants(tmp_path, fixture_tables):
    import figure_ablations

    fig = build(figure_ablations, tmp_path, {"summary": fixture_tables.paths["ablations"]})
    by_title = panels(fig)
    assert list(by_title) == ["layers (TrMRL on cheetah-vel)"]
    ax = by_title["layers (TrMRL on cheetah-vel)"]
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["layers=1 (main run)", "layers=2"]
    lines = agent_lines(ax)
    assert lines["layers=1 (main run)"].get_linewidth() > lines["layers=2"].get_linewidth()
    assert lines["layers=1 (main run)"].get_color() != lines["layers=2"].get_color()


def test_latent_map_colourbars_are_integer_for_task_indices(tmp_path, fixture_tables):
    import figure_latent_map

    fig = build(figure_latent_map, tmp_path, {}, runs=fixture_tables.runs)
    by_title = panels(fig)
    assert list(by_title) == ["TrMRL on cheetah-vel (seed 0)", "TrMRL on ml1-reach (seed 0)"]
    colourbars = [ax for ax in fig.axes if not ax.get_title()]
    assert len(colourbars) == 2
    index_bar = colourbars[1]
    ticks = [t for t in index_bar.get_yticks() if 0 <= t <= 19]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert index_bar.get_ylabel().startswith("Index of the goal")
    assert "0-49" not in index_bar.get_ylabel()  # the split's range, not the 20 tasks shown
    assert colourbars[0].get_ylabel() == "Target velocity (m/s)"
    for ax in by_title.values():
        assert ax.get_xlabel().startswith("PC 1 (") and ax.get_ylabel().startswith("PC 2 (")


def test_latent_map_variance_never_rounds_to_zero(scripts_on_path):
    import figure_latent_map

    assert figure_latent_map.variance_label(2, 0.004) == "PC 2 (0.4% of variance)"
    assert figure_latent_map.variance_label(1, 0.62) == "PC 1 (62% of variance)"
    assert figure_latent_map.variance_label(2, 0.0) == "PC 2 (<0.1% of variance)"


def aggregate_inputs(t):
    return {"aggregate": t["aggregate"], "improvement": t["improvement"],
            "curves": t["curves_by_seed"]}


def test_aggregate_figure_as_rliable_draws_it(tmp_path, fixture_tables):
    import figure_aggregate

    fig = build(figure_aggregate, tmp_path, aggregate_inputs(fixture_tables.paths))
    by_title = panels(fig)
    assert list(by_title) == ["Median", "IQM", "Mean", "Optimality gap",
                              "Probability of improvement"]
    median = by_title["Median"]
    # agents as rows; the references are the scale (dashed lines), never a row
    assert [t.get_text() for t in median.get_yticklabels()] == ["TrMRL", "RL²"]
    assert len(median.patches) == 2
    improvement = by_title["Probability of improvement"]
    assert [t.get_text() for t in improvement.get_yticklabels()] == ["P(TrMRL > RL²)"]
    assert improvement.get_xlim() == (0, 1)
    assert fig.get_suptitle() == "Aggregate over 2 envs: cheetah-vel, ml1-reach"
    # the bar spans the table's CI (one code path: the table's numbers drawn as they are)
    table = fixture_tables.tables["aggregate"].set_index("agent")
    bar = median.patches[0]
    assert bar.get_x() == pytest.approx(table.loc["trmrl", "median_ci_low"])
    assert bar.get_x() + bar.get_width() == pytest.approx(table.loc["trmrl", "median_ci_high"])


def test_aggregate_figure_names_the_envs_left_out(tmp_path, fixture_tables, scripts_on_path):
    import aggregate_scores
    import figure_aggregate

    t = dict(fixture_tables.paths)
    curves = pd.read_csv(t["curves_by_seed"])
    references = (curves["env"] == "ml1-reach") & curves["agent"].isin(["oracle", "memoryless"])
    curves.loc[references, "value"] = 0.15  # the two references tie: no scale on ml1-reach
    t["curves_by_seed"] = str(tmp_path / "tied.csv")
    curves.to_csv(t["curves_by_seed"], index=False)
    for name in ["normalized", "aggregate", "improvement"]:
        t[name] = str(tmp_path / f"tied_{name}.csv")
    aggregate_scores.main(job(tmp_path, "scores", inputs={"curves": t["curves_by_seed"]},
                              outputs={k: t[k] for k in ["normalized", "aggregate", "improvement"]},
                              params={"analysis": analysis()}))
    fig = build(figure_aggregate, tmp_path, aggregate_inputs(t))
    assert fig.get_suptitle() == ("Aggregate over 1 env: cheetah-vel\nleft out: ml1-reach "
                                  "(oracle and memoryless score the same (0.15))")


def test_aggregate_figure_all_pairs_as_a_matrix(tmp_path, fixture_tables):
    import figure_aggregate

    settings = {**FIGURE_SETTINGS, "probability_of_improvement": "matrix"}
    fig = build(figure_aggregate, tmp_path, aggregate_inputs(fixture_tables.paths), settings)
    ax = panels(fig)["Probability of improvement P(row > column)"]
    matrix = ax.images[0].get_array()
    assert matrix.shape == (2, 2)
    assert np.isnan(np.ma.filled(matrix, np.nan)[0, 0])  # no agent against itself
    improvement = fixture_tables.tables["improvement"].set_index(["agent_x", "agent_y"])
    assert matrix[0, 1] == improvement.loc[("trmrl", "rl2"), "probability"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["TrMRL", "RL²"]
