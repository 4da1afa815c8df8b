"""The experiment's report, results/<experiment>/report.html: one self-contained page that
opens offline (figures embedded as PNG, inline CSS, no JavaScript). On the first screen: a
strip of the six figures, the aggregate scores and each agent's final score per env. Below:
every figure with its caption (workflow/report/<figure>.rst, the captions Snakemake's own
report shows too), the adaptation and OOD tables, the configuration as a table, and links to
the CSV tables and to provenance.html.

provenance.html is Snakemake's own `--report` of the same experiment: the rule graph, each
job's runtime, code and parameters. This page does not repeat that; it links to it.
"""

import base64
import html
import io
import logging
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import aggregate_scores
import jinja2
import numpy as np
import pandas as pd
import plotting
import yaml
from analysis import setup_logging
from docutils.core import publish_parts
from markupsafe import Markup
from PIL import Image

log = logging.getLogger("trmrl.workflow")

THUMBNAIL_SIZE = (480, 200)  # px box of the figure strip's images (sharp at twice the shown size)
TABLES_ON_PAGE = ("aggregate_scores", "training_curves", "adaptation", "ood")
# aggregate metrics, in rliable's order; the mean's CI keeps DESIGN.md's plain column names
AGGREGATE_METRICS = [("median", "Median", "median_ci_low", "median_ci_high"),
                     ("iqm", "IQM", "iqm_ci_low", "iqm_ci_high"),
                     ("mean", "Mean", "ci_low", "ci_high"),
                     ("optimality_gap", "Optimality gap ↓", "optimality_gap_ci_low",
                      "optimality_gap_ci_high")]


@dataclass
class ReportInputs:
    """Everything the page is made of; `main` fills it from the snakemake job."""

    config: dict  # the experiment's validated config (results/<experiment>/config.yaml)
    figures: dict[str, str]  # figure name (fig1_training_curves, ...) -> its PNG, page order
    tables: dict[str, str]  # table name -> its CSV (tables/<name>.csv)
    captions: Path  # workflow/report/: <figure>.rst, tables.rst, workflow.rst
    envs: dict[str, dict]  # env -> `trmrl envs --json` record (metric, task parameter)
    runs: list[dict] = field(default_factory=list)  # main runs: agent, env, seed, path
    missing: list[str] = field(default_factory=list)  # runs left out (allow_partial)
    provenance: str | None = "provenance.html"  # link target, relative to report.html
    config_file: str = "config.yaml"  # link target, relative to report.html


# ---------------------------------------------------------------------------------------
# captions and images
# ---------------------------------------------------------------------------------------
def rst_to_html(text: str, config: dict) -> Markup:
    """A caption as HTML. Captions are Jinja templates (Snakemake renders them with its
    `snakemake` object; only `snakemake.config` is used), then reStructuredText."""
    text = jinja2.Template(text).render(snakemake=SimpleNamespace(config=config))
    parts = publish_parts(text, writer="html5", settings_overrides={
        "report_level": 5, "halt_level": 5, "doctitle_xform": False})
    return Markup(parts["fragment"])


def caption_title(text: str) -> str:
    """The caption's bold lead ("**Fast adaptation.** ..."): the figure's short title."""
    match = re.match(r"\s*\*\*(.+?)\*\*", text)
    return match.group(1).rstrip(".,:") if match else ""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail(path: str) -> tuple[str, int, int]:
    """(data URI, width, height) of a small copy of a figure, for the strip at the top."""
    with Image.open(path) as image:
        image.thumbnail(THUMBNAIL_SIZE, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        return data_uri(buffer.getvalue()), image.width, image.height


def figure_cards(inputs: ReportInputs) -> list[dict]:
    cards = []
    for number, (name, png) in enumerate(inputs.figures.items(), start=1):
        rst = inputs.captions / f"{name}.rst"
        text = rst.read_text() if rst.exists() else ""
        with Image.open(png) as image:
            width, height = image.size
        thumb, thumb_width, thumb_height = thumbnail(png)
        cards.append({"id": name, "number": number, "title": caption_title(text) or name,
                      "caption": rst_to_html(text, inputs.config) if text else "",
                      "src": data_uri(Path(png).read_bytes()), "width": width, "height": height,
                      "thumb": thumb, "thumb_width": thumb_width, "thumb_height": thumb_height,
                      "file": f"figures/{name}.pdf"})
    return cards


# ---------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------
def agent_cell(agent: str) -> str:
    """The agent's name with a swatch of its colour in the figures."""
    colour = plotting.AGENT_COLOURS.get(agent, "#000000")
    return (f'<span class="swatch" style="background:{colour}"></span>'
            f"{html.escape(plotting.label(agent, short=True))}")


def number(value: float, digits: int) -> str:
    if not np.isfinite(value):
        return "–"
    text = f"{value:,.{digits}f}"
    return text[1:] if re.fullmatch(r"-[0.]+", text) else text  # no "-0.00"


def estimate(mean: float, low: float, high: float, digits: int, best: bool = False) -> str:
    """"mean [low, high]" (the CI smaller and grey); only the mean where there is no CI
    (one seed). ``best`` marks the best agent of a column."""
    text = number(mean, digits)
    if best:
        text = f"<strong>{text}</strong>"
    if np.isfinite(low) and np.isfinite(high):
        text += f' <span class="ci">[{number(low, digits)}, {number(high, digits)}]</span>'
    return text


def digits_for(values: pd.Series, metric: str = "") -> int:
    """Decimals that show differences without noise: none for success rates (percent) and
    returns in the hundreds, two for scores in [0, 1]."""
    if metric == "success_rate":
        return 0
    span = float(np.nanmax(np.abs(values))) if len(values) and values.notna().any() else 1.0
    return 0 if span >= 100 else 1 if span >= 10 else 2


def best_agents(frame: pd.DataFrame, column: str, lower_is_better: bool = False) -> set:
    """The best non-reference agent of a column (ties all bold)."""
    candidates = frame[~frame["agent"].isin(plotting.REFERENCES)].dropna(subset=[column])
    if len(candidates) < 2:
        return set()
    target = candidates[column].min() if lower_is_better else candidates[column].max()
    best = set(candidates.loc[np.isclose(candidates[column], target), "agent"])
    return best if len(best) < len(candidates) else set()  # all tied: nobody stands out


def html_table(rows: list[dict]) -> Markup:
    """Rows of already formatted HTML cells (agent first, then numbers) as a table."""
    table = pd.DataFrame(rows).to_html(index=False, escape=False, na_rep="–")
    return Markup(re.sub(r"<table[^>]*>", '<table class="results">', table, count=1))


def aggregate_table(aggregate: pd.DataFrame) -> Markup:
    agents = plotting.ordered(aggregate["agent"])
    frame = aggregate.set_index("agent").loc[agents].reset_index()
    best = {metric: best_agents(frame, metric, lower_is_better=metric == "optimality_gap")
            for metric, *_ in AGGREGATE_METRICS}
    # 2 decimals for scores near [0, 1]; fewer where a near-zero oracle - memoryless gap
    # (undertrained references) blows the normalised scores up
    digits = digits_for(pd.concat([frame[metric] for metric, *_ in AGGREGATE_METRICS]))
    rows = []
    for _, row in frame.iterrows():
        cells = {"Agent": agent_cell(row["agent"])}
        for metric, title, low, high in AGGREGATE_METRICS:
            cells[title] = estimate(row[metric], row[low], row[high], digits,
                                    best=row["agent"] in best[metric])
        rows.append(cells)
    return html_table(rows)


def metric_header(env: str, metric: str) -> str:
    unit = plotting.METRIC_LABELS.get(metric, metric).lower()
    return f'{html.escape(env)}<br><span class="unit">{html.escape(unit)}</span>'


def scaled(frame: pd.DataFrame) -> pd.DataFrame:
    """Success rates in percent, as the figures draw them."""
    factor = frame["metric"].map(plotting.scale)
    return frame.assign(**{c: frame[c] * factor for c in ("mean", "ci_low", "ci_high")})


def final_score_table(curves: pd.DataFrame, envs: list[str]) -> Markup:
    """Agents x envs: the mean over seeds at each env's last evaluation point."""
    last = curves.groupby(["agent", "env"])["env_steps"].transform("max")
    finals = scaled(curves[curves["env_steps"] == last])
    envs = [env for env in envs if env in set(finals["env"])]
    rows = {agent: {"Agent": agent_cell(agent)} for agent in plotting.ordered(finals["agent"])}
    for env in envs:
        mine = finals[finals["env"] == env]
        header = metric_header(env, mine["metric"].iloc[0])
        steps = int(mine["env_steps"].max())
        header += f' <span class="unit">at {steps:,} steps</span>'
        digits = digits_for(mine["mean"], mine["metric"].iloc[0])
        best = best_agents(mine, "mean")
        for _, row in mine.iterrows():
            rows[row["agent"]][header] = estimate(row["mean"], row["ci_low"], row["ci_high"],
                                                  digits, best=row["agent"] in best)
    return html_table(list(rows.values()))


def episode_tables(summary: pd.DataFrame, envs: list[str]) -> list[dict]:
    """Per env, agents x episodes of the trial (adaptation, OOD): mean [CI] per episode."""
    summary = scaled(summary)
    tables = []
    for env in [e for e in envs if e in set(summary["env"])]:
        mine = summary[summary["env"] == env]
        digits = digits_for(mine["mean"], mine["metric"].iloc[0])
        rows = {agent: {"Agent": agent_cell(agent)} for agent in plotting.ordered(mine["agent"])}
        for episode, group in mine.groupby("episode"):
            best = best_agents(group, "mean")
            for _, row in group.iterrows():
                rows[row["agent"]][f"Episode {int(episode) + 1}"] = estimate(
                    row["mean"], row["ci_low"], row["ci_high"], digits,
                    best=row["agent"] in best)
        metric = plotting.METRIC_LABELS.get(mine["metric"].iloc[0], "")
        tables.append({"env": env, "metric": metric, "table": html_table(list(rows.values()))})
    return tables


def aggregate_envs(curves_by_seed: str | None) -> tuple[list[str], dict[str, str]]:
    """(envs in the aggregate, env -> why it was left out), as figure 6's title says."""
    if not curves_by_seed:
        return [], {}
    curves = pd.read_csv(curves_by_seed)
    normalized, excluded = aggregate_scores.normalise(aggregate_scores.final_scores(curves))
    return list(dict.fromkeys(normalized["env"])), excluded


# ---------------------------------------------------------------------------------------
# the configuration, as a reader wants it
# ---------------------------------------------------------------------------------------
def value_text(value) -> str:
    """A config value as YAML writes it inline (lists as [a, b], booleans true/false)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix(
        "\n...").removesuffix("...").strip()


def run_records(runs: list[dict]) -> pd.DataFrame:
    """agent, env, seed, steps, device, version, commit of each run (its config.yaml)."""
    rows = []
    for run in runs:
        path = Path(run["path"]) / "config.yaml"
        resolved = yaml.safe_load(path.read_text()) if path.exists() else {}
        hyperparameters = resolved.get("hyperparameters") or {}
        rows.append({"agent": run["agent"], "env": run["env"], "seed": run["seed"],
                     "steps": hyperparameters.get("steps"), "device": resolved.get("device"),
                     "version": resolved.get("trmrl_version"),
                     "commit": resolved.get("git_commit")})
    return pd.DataFrame(rows, columns=["agent", "env", "seed", "steps", "device", "version",
                                       "commit"])


def budget_text(records: pd.DataFrame, envs: list[str]) -> str:
    """Env steps per run for each env: the common budget, then the agents that differ."""
    parts = []
    for env in envs:
        mine = records[(records["env"] == env) & records["steps"].notna()]
        if mine.empty:
            continue
        by_agent = mine.groupby("agent", sort=False)["steps"].max().astype(int)
        common = by_agent.mode().max()
        others = [f"{html.escape(plotting.label(agent, short=True))} {steps:,}"
                  for agent, steps in by_agent.items() if steps != common]
        text = f"{html.escape(env)}: {common:,}"
        parts.append(text + (f" ({', '.join(others)})" if others else ""))
    return "; ".join(parts) or "see each run's config.yaml"


def listed(values) -> str:
    return ", ".join(html.escape(str(v)) for v in values)


def config_rows(config: dict, records: pd.DataFrame, envs_info: dict) -> list[tuple[str, str]]:
    """(setting, HTML) pairs: what was run, with which budgets, where, with which code."""
    agents = config["agents"]
    rows = [("Experiment", html.escape(config["experiment"])),
            ("Agents", ", ".join(f"{agent_cell(a)} <code>{html.escape(a)}</code>"
                                 for a in agents))]
    envs = []
    for env in config["envs"]:
        info = envs_info.get(env, {})
        metric = plotting.METRIC_LABELS["success_rate" if info.get("success_metric")
                                        else "return"].lower().removesuffix(" (%)")
        envs.append(f"<code>{html.escape(env)}</code> ({html.escape(metric)})")
    rows.append(("Envs", ", ".join(envs)))
    rows.append(("Seeds", f"{listed(config['seeds'])} ({len(config['seeds'])} per agent and env)"))
    rows.append(("Budget (env steps per run)", budget_text(records, config["envs"])))
    devices = sorted(set(records["device"].dropna()))
    device = html.escape(str(config.get("device", "auto")))
    if devices and devices != [config.get("device")]:
        device += f" (runs used: {listed(devices)})"
    rows.append(("Device", device))
    versions = sorted(set(records["version"].dropna()))
    # "<sha>" or "<sha>-dirty" (uncommitted changes); 12 hex digits name a commit
    commits = sorted({re.sub(r"^([0-9a-f]{12})[0-9a-f]*", r"\1", str(c))
                      for c in records["commit"].dropna()})
    if versions or commits:
        code = [f"trmrl {listed(versions)}"] if versions else []
        if commits:
            code.append(f"git commit{'s' * (len(commits) > 1)} " + ", ".join(
                f"<code>{html.escape(c)}</code>" for c in commits))
        if len(commits) > 1 or any(c.endswith("-dirty") for c in commits):
            code.append("the runs were not all trained on one committed version: each run's "
                        "config.yaml names its own")
        rows.append(("Code", "; ".join(code)))
    ablations = config.get("ablations") or {}
    if ablations.get("studies"):
        studies = "; ".join(
            f"{html.escape(study)} (" + " × ".join(
                f"{html.escape(key)} ∈ {{{listed(value_text(v) for v in values)}}}"
                for key, values in grid.items()) + ")"
            for study, grid in ablations["studies"].items())
        seeds = ablations.get("seeds") or config["seeds"]
        rows.append(("Ablations", f"{agent_cell(ablations['agent'])} on "
                                  f"<code>{html.escape(ablations['env'])}</code>, seeds "
                                  f"{listed(seeds)}: {studies}"))
    overrides = override_table(config.get("hyperparameters") or {}, agents, config["envs"])
    if overrides:
        rows.append(("Hyperparameter overrides", overrides))
    statistics = config.get("statistics") or {}
    if statistics:
        rows.append(("Statistics", (
            f"{statistics['confidence_level']:.0%} percentile bootstrap CIs over seeds "
            f"(stratified by env across envs), {statistics['bootstrap_resamples']:,} resamples, "
            f"bootstrap seed {statistics['seed']}")))
    figures = config.get("figures") or {}
    if figures:
        choice = html.escape(figures["probability_of_improvement"])
        rows.append(("Figure 6", f"agent of interest {agent_cell(figures['agent_of_interest'])}"
                                 f"; probability of improvement: <code>{choice}</code>"))
    resources = config.get("resources") or {}
    if any(resources.values()):
        rows.append(("Resources per job", "; ".join(
            f"{html.escape(kind)}: {resource_text(settings)}"
            for kind, settings in resources.items() if settings)))
    rows.append(("Train revision", html.escape(value_text(config.get("train_revision", 0)))))
    rows.append(("Partial results allowed", "yes" if config.get("allow_partial") else "no"))
    return rows


RESOURCE_UNITS = {"cpus": "CPU", "gpu": "GPU", "mem_mb": "MB memory", "runtime": "min"}


def resource_text(settings: dict) -> str:
    """{"cpus": 1, "mem_mb": 2000, "runtime": 30} -> "1 CPU, 2,000 MB memory, 30 min"."""
    return ", ".join(f"{value:,} {RESOURCE_UNITS[key]}" if key in RESOURCE_UNITS
                     else f"{html.escape(key)} {html.escape(value_text(value))}"
                     for key, value in settings.items())


def override_table(hyperparameters: dict, agents: list[str], envs: list[str]) -> str:
    """hyperparameters.<agent|all>.<env|default> as rows "agent, env: key = value, ...",
    those that apply to the experiment's agents and envs."""
    rows = []
    for agent, per_env in hyperparameters.items():
        for env, values in (per_env or {}).items():
            if not values or agent not in ("all", *agents) or env not in ("default", *envs):
                continue
            settings = ", ".join(f"<code>{html.escape(k)} = {html.escape(value_text(v))}</code>"
                                 for k, v in values.items())
            who = "every agent" if agent == "all" else agent_cell(agent)
            where = "every env" if env == "default" else f"<code>{html.escape(env)}</code>"
            rows.append(f"<tr><th>{who}</th><td>{where}</td><td>{settings}</td></tr>")
    if not rows:
        return ""
    return '<table class="overrides">' + "".join(rows) + "</table>"


# ---------------------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------------------
PAGE = jinja2.Environment(autoescape=True).from_string("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>trmrl-bench · {{ experiment }}</title>
<style>
:root { --ink: #1f2328; --muted: #656d76; --line: #d8dee4; --paper: #ffffff;
        --panel: #f6f8fa; --accent: #0b5cad; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--ink); background: var(--panel); }
a { color: var(--accent); }
code, .docutils.literal { font: 0.88em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
       background: var(--panel); padding: 0 3px; border-radius: 3px; }
header { background: var(--paper); border-bottom: 1px solid var(--line);
         padding: 12px 24px 10px; }
header h1 { margin: 0; font-size: 20px; }
header h1 .experiment { color: var(--muted); font-weight: 500; }
header p { margin: 2px 0 0; color: var(--muted); }
header nav { float: right; margin-top: 4px; }
header nav a { margin-left: 16px; }
main { max-width: 1680px; margin: 0 auto; padding: 12px 24px 40px; }
h2 { font-size: 17px; margin: 22px 0 8px; }
.warning { background: #fff8c5; border: 1px solid #d4a72c; padding: 8px 12px;
           border-radius: 6px; margin: 10px 0; }
.strip { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 10px;
         padding: 4px 0 12px; }
.strip a { display: block; text-decoration: none; color: var(--ink); background: var(--paper);
           border: 1px solid var(--line); border-radius: 6px; padding: 6px; font-size: 12.5px; }
.strip a:hover { border-color: var(--accent); }
.strip img { display: block; width: 100%; height: 96px; object-fit: contain; margin-bottom: 4px; }
.glance { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr));
          gap: 14px; align-items: start; }
.stack { display: grid; gap: 14px; }
.card { background: var(--paper); border: 1px solid var(--line); border-radius: 8px;
        padding: 12px 16px; min-width: 0; }
.card h3 { margin: 0 0 6px; font-size: 15px; }
.note { color: var(--muted); font-size: 13px; margin: 6px 0 0; }
.scroll { overflow-x: auto; }
table.results { border-collapse: collapse; font-size: 13.5px; width: 100%; }
table.results caption { text-align: left; color: var(--muted); }
table.results th, table.results td { padding: 4px 10px; border-bottom: 1px solid var(--line);
                                     white-space: nowrap; }
table.results thead th { text-align: right; vertical-align: bottom; font-weight: 600;
                         border-bottom: 2px solid var(--ink); }
table.results thead th:first-child, table.results td:first-child { text-align: left; }
table.results td { text-align: right; font-variant-numeric: tabular-nums; }
table.results tbody tr:hover { background: var(--panel); }
/* the CI under the mean: narrow columns, so that two tables fit side by side */
.ci { display: block; color: var(--muted); font-size: 0.85em; }
.unit { display: block; color: var(--muted); font-weight: 400; font-size: 0.88em; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
          margin-right: 6px; vertical-align: baseline; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(600px, 1fr));
           gap: 14px; }
figure.card { margin: 0; scroll-margin-top: 12px; }
figure.card img { display: block; max-width: 100%; height: auto; margin: 4px auto 8px;
                  cursor: zoom-in; }
figcaption { font-size: 13.5px; }
figcaption p { margin: 0 0 6px; }
.zoom:target { position: fixed; inset: 0; z-index: 10; overflow: auto; padding: 24px;
               background: rgba(255, 255, 255, 0.98); }
.zoom:target img { width: auto; max-width: 100%; cursor: zoom-out; }  /* natural size */
.zoom .close { display: none; }
.zoom:target .close { display: block; position: fixed; top: 8px; right: 20px;
                      font-size: 26px; text-decoration: none; }
table.config { border-collapse: collapse; font-size: 14px; width: 100%; }
table.config > tbody > tr > th { text-align: left; vertical-align: top; width: 15em;
                                 padding: 5px 12px 5px 0; font-weight: 600; }
table.config > tbody > tr > td { padding: 5px 0; }
table.config > tbody > tr { border-bottom: 1px solid var(--line); }
table.overrides { border-collapse: collapse; }
table.overrides th, table.overrides td { text-align: left; font-weight: 400;
                                         padding: 1px 14px 1px 0; vertical-align: top; }
table.overrides th, table.overrides td:nth-child(2) { white-space: nowrap; }
ul.files { columns: 2; margin: 6px 0; }
</style>
</head>
<body>
<header>
  <nav>
    <a href="#figures">Figures</a><a href="#tables">Tables</a>
    <a href="#configuration">Configuration</a>
    {% if provenance %}<a href="{{ provenance }}">Provenance (Snakemake report)</a>{% endif %}
  </nav>
  <h1>trmrl-bench <span class="experiment">· experiment {{ experiment }}</span></h1>
  <p>{{ summary }}</p>
</header>
<main>
{% if missing %}
<p class="warning"><strong>Partial results:</strong> {{ missing | length }} run(s) left out
(unfinished when the tables were built): {{ missing | join(", ") }}.</p>
{% endif %}
<div class="strip">
{% for card in cards %}
  <a href="#{{ card.id }}" title="Figure {{ card.number }}: {{ card.title }}">
    <img src="{{ card.thumb }}" width="{{ card.thumb_width }}" height="{{ card.thumb_height }}"
         alt="Figure {{ card.number }} (small)">
    {{ card.number }}. {{ card.title }}</a>
{% endfor %}
</div>
<div class="glance">
{% if aggregate %}
  <section class="card" id="aggregate">
    <h3>Aggregate normalised score over envs (0 = memoryless, 1 = oracle)</h3>
    <div class="scroll">{{ aggregate }}</div>
    <p class="note">Over every env × seed run's final evaluation ({{ aggregate_runs }} runs
    per agent); envs: {{ aggregate_envs }}.
    {%- if aggregate_excluded %} Left out: {{ aggregate_excluded }}.{% endif %}
    Brackets: {{ confidence }} stratified bootstrap CIs; bold: the best agent besides the
    references. Figure 6 draws these.</p>
  </section>
{% endif %}
{% if final %}
  <section class="card" id="final">
    <h3>Final score on the test tasks (mean over seeds)</h3>
    <div class="scroll">{{ final }}</div>
    <p class="note">The last point of figure 1's curves. Brackets: {{ confidence }} bootstrap
    CIs over seeds; bold: the best agent besides the references.</p>
  </section>
{% endif %}
</div>

<h2 id="figures">Figures</h2>
<div class="figures">
{% for card in cards %}
  <figure class="card" id="{{ card.id }}">
    <h3>Figure {{ card.number }}. {{ card.title }}</h3>
    <div class="zoom" id="{{ card.id }}-zoom">
      <a class="close" href="#{{ card.id }}" title="Close">×</a>
      <a href="#{{ card.id }}-zoom" title="Full size"><img src="{{ card.src }}"
         width="{{ card.width }}" height="{{ card.height }}" alt="Figure {{ card.number }}:
         {{ card.title }}"></a>
    </div>
    <figcaption>{{ card.caption }}<p class="note">Click the figure for full size;
      <a href="{{ card.file }}">PDF</a> for print.</p></figcaption>
  </figure>
{% endfor %}
</div>

<h2 id="tables">Tables</h2>
<div class="stack">
{% for table in adaptation %}
  <section class="card">
    <h3>Fast adaptation, {{ table.env }}: {{ table.metric | lower }} in each episode of the
      trial</h3>
    <div class="scroll">{{ table.table }}</div>
  </section>
{% endfor %}
{% for table in ood %}
  <section class="card">
    <h3>Out-of-distribution tasks, {{ table.env }}: {{ table.metric | lower }} in each episode</h3>
    <div class="scroll">{{ table.table }}</div>
  </section>
{% endfor %}
</div>
{% if adaptation or ood %}
<p class="note">Means over seeds of the mean over tasks, {{ confidence }} bootstrap CIs over
seeds in brackets (figures 2 and 3).</p>
{% endif %}
<section class="card" style="margin-top: 14px">
  <h3>All tables (CSV)</h3>
  <ul class="files">
  {% for name, path in files %}<li><a href="{{ path }}">{{ name }}</a></li>{% endfor %}
  </ul>
  <div class="note">{{ tables_caption }}</div>
</section>

<h2 id="configuration">Configuration</h2>
<section class="card">
  {{ workflow_text }}
  <table class="config"><tbody>
  {% for name, value in config_rows %}<tr><th>{{ name }}</th><td>{{ value }}</td></tr>
  {% endfor %}
  </tbody></table>
  <p class="note">The whole config: <a href="{{ config_file }}">{{ config_file }}</a>
  {%- if provenance %}; the rule graph, each job's runtime, code and parameters:
  <a href="{{ provenance }}">{{ provenance }}</a> (Snakemake's report){% endif %}.</p>
</section>
</main>
</body>
</html>
""")


def build_page(inputs: ReportInputs) -> str:
    config = inputs.config
    tables = {name: pd.read_csv(path) for name, path in inputs.tables.items()
              if name in TABLES_ON_PAGE}
    envs = list(config["envs"])
    cards = figure_cards(inputs)
    records = run_records(inputs.runs)
    used, excluded = aggregate_envs(inputs.tables.get("training_curves_by_seed")
                                    if "aggregate_scores" in tables else None)
    level = (config.get("statistics") or {}).get("confidence_level", 0.95)
    labels = [plotting.label(a, short=True) for a in config["agents"]]
    summary = (f"{len(labels)} agents ({', '.join(labels)}) on {len(envs)} "
               f"env{'s' * (len(envs) != 1)} ({', '.join(envs)}), "
               f"{len(config['seeds'])} seed{'s' * (len(config['seeds']) != 1)} each")
    table_files = [(f"{name}.csv", f"tables/{Path(path).name}")
                   for name, path in inputs.tables.items()]
    tables_rst = inputs.captions / "tables.rst"
    workflow_rst = inputs.captions / "workflow.rst"
    return PAGE.render(
        experiment=config["experiment"], summary=summary, missing=inputs.missing,
        provenance=inputs.provenance, config_file=inputs.config_file, cards=cards,
        confidence=f"{level:.0%}",
        aggregate=aggregate_table(tables["aggregate_scores"]) if "aggregate_scores" in tables
        else "",
        aggregate_envs=", ".join(used) or "none",
        aggregate_runs="/".join(str(n) for n in sorted(set(tables["aggregate_scores"]["n_runs"])))
        if "aggregate_scores" in tables else "",
        aggregate_excluded="; ".join(f"{env} ({why})" for env, why in excluded.items()),
        final=final_score_table(tables["training_curves"], envs)
        if "training_curves" in tables else "",
        adaptation=episode_tables(tables["adaptation"], envs) if "adaptation" in tables else [],
        ood=episode_tables(tables["ood"], envs) if "ood" in tables else [],
        files=table_files,
        tables_caption=rst_to_html(tables_rst.read_text(), config) if tables_rst.exists() else "",
        workflow_text=rst_to_html(workflow_rst.read_text(), config)
        if workflow_rst.exists() else "",
        config_rows=[(name, Markup(value)) for name, value in
                     config_rows(config, records, inputs.envs)])


def write_provenance(snakemake, output: str) -> None:
    """Snakemake's own report of this experiment (rule graph, runtimes, code), made by a
    second `snakemake --report` on the experiment's config snapshot."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", snakemake.params.snakefile,
               "--directory", snakemake.params.workdir, "--configfile", snakemake.input.config,
               "--report", output, "--nolock", "figures", "tables"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        log.error("snakemake --report failed (exit %d):\n%s", result.returncode,
                  result.stdout[-3000:] + result.stderr[-3000:])
        raise SystemExit(1)
    log.info("provenance report: %s", output)


def main(snakemake):
    setup_logging(snakemake)
    write_provenance(snakemake, snakemake.output.provenance)
    inputs = ReportInputs(
        config=yaml.safe_load(Path(snakemake.input.config).read_text()),
        figures={Path(path).stem: path for path in snakemake.input.figures
                 if path.endswith(".png")},  # in the workflow's figure order
        tables={Path(path).stem: path for path in snakemake.input.tables},
        captions=Path(snakemake.input.captions[0]).parent,  # workflow/report/
        envs=snakemake.params.analysis["envs"], runs=snakemake.params.runs,
        missing=snakemake.params.missing,
        provenance=Path(snakemake.output.provenance).name)
    Path(snakemake.output.report).write_text(build_page(inputs))
    log.info("report: %s", snakemake.output.report)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by snakemake's `script:`)
