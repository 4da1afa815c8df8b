"""The cost plan: the expected hours of every planned run on a machine kind, from measured rates.

The rates live in a committed CSV (benchmarks/rates.csv), one row per measurement: which agent
on which env, under which defaults version, on which machine kind, at how many env steps per
second. The benchmark scripts append rows (`train_throughput.py --record`, `record_run_rate.py`).
A run's hours are its env-step budget / the rate / 3600. A rate is never invented: a run whose
agent has no rate for its env and defaults version on the machine is *unknown*; the rate of
another env with the same body may stand in, and the plan says so on that row.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, fields
from pathlib import Path

from trmrl.errors import UserError

RATE_COLUMNS = ("machine", "agent", "env", "defaults_version", "device", "env_steps_per_s",
                "measured", "command", "date", "note")
# a whole run's rate includes evaluations, checkpoints and the update's changing length (the
# KL stop); the first iterations of train_throughput.py only extrapolate
MEASURED = ("whole run", "first iterations")
MACHINE_PATTERN = re.compile(r"[a-z0-9][a-z0-9.+-]*")  # e.g. h200-16core, cpu-2core
DATE_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")
# the committed table, beside the package in a checkout (pip install -e .)
DEFAULT_RATES = Path(__file__).resolve().parents[1] / "benchmarks" / "rates.csv"

# --set keys that change how fast a run goes, not what it computes: a rate measured with them is
# still a rate of the defaults (a rate of other hyperparameters would not be)
SPEED_KEYS = ("num_workers", "pipeline_sampling", "cuda_graphs", "torch_compile")

# Envs whose steps cost about the same: the same MuJoCo body and horizon, differing only in the
# task's reward (cheetah-vel/-dir) or in the object on the table (the ML1 tasks). Only these
# may lend each other a rate, and the plan names the env it borrowed from.
ENV_BODIES = {
    "cheetah-vel": "half-cheetah", "cheetah-dir": "half-cheetah",
    "ant-dir": "ant", "ant-goal": "ant",
    "humanoid-dir": "humanoid",
    "walker-params": "walker2d",
    "hopper-params": "hopper",
    "ml1-reach": "sawyer-ml1", "ml1-push": "sawyer-ml1", "ml1-pick-place": "sawyer-ml1",
    "ml10": "sawyer-ml10",  # 10 tasks per batch: other objects, other costs
    "ml45": "sawyer-ml45",
}


@dataclass(frozen=True)
class Rate:
    """One measured row of the rates table."""

    machine: str  # the machine kind, e.g. h200-16core: GPU model and CPU cores
    agent: str
    env: str
    defaults_version: int  # the agent's defaults version the measurement ran
    device: str  # what the run trained on, e.g. "cuda (NVIDIA H200)", "cpu (2 threads)"
    env_steps_per_s: float  # per run: with several runs at once, each one's own rate
    measured: str  # one of MEASURED
    command: str  # the command that was measured
    date: str  # YYYY-MM-DD
    note: str  # conditions: alone or beside other runs, load average, source run directory

    def describe(self) -> str:
        return (f"{self.env_steps_per_s / 1000:,.1f}k/s, {self.measured}, "
                f"defaults v{self.defaults_version}, {self.date}")


def read_rates(path: str | Path) -> list[Rate]:
    """The rates table; a malformed row is an error naming the file, line and value."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise UserError(f"cannot read the rates table {path}: {error.strerror or error}") from None
    reader = csv.DictReader(text.splitlines())
    if tuple(reader.fieldnames or ()) != RATE_COLUMNS:
        raise UserError(f"{path}: the header must be {','.join(RATE_COLUMNS)}, got "
                        f"{','.join(reader.fieldnames or ())}")
    rates = []
    for row in reader:
        where = f"{path}, line {reader.line_num}"
        if None in row or None in row.values():
            raise UserError(f"{where}: expected {len(RATE_COLUMNS)} columns")
        rates.append(_parse_rate(row, where))
    return rates


def _parse_rate(row: dict[str, str], where: str) -> Rate:
    values = {key: row[key].strip() for key in RATE_COLUMNS}
    for key in ("machine", "agent", "env", "command", "date"):
        if not values[key]:
            raise UserError(f"{where}: `{key}` is empty")
    if not MACHINE_PATTERN.fullmatch(values["machine"]):
        raise UserError(f"{where}: machine kind {values['machine']!r} is not lowercase letters, "
                        "digits, '.', '+' and '-' (e.g. h200-16core)")
    if values["env"] not in ENV_BODIES:
        raise UserError(f"{where}: unknown env {values['env']!r}; valid envs: "
                        f"{', '.join(ENV_BODIES)}")
    if values["measured"] not in MEASURED:
        raise UserError(f"{where}: `measured` is {values['measured']!r}; valid: "
                        f"{', '.join(MEASURED)}")
    if not DATE_PATTERN.fullmatch(values["date"]):
        raise UserError(f"{where}: date {values['date']!r} is not YYYY-MM-DD")
    try:
        version = int(values["defaults_version"])
    except ValueError:
        raise UserError(f"{where}: defaults_version must be an integer, got "
                        f"{values['defaults_version']!r}") from None
    try:
        rate = float(values["env_steps_per_s"])
    except ValueError:
        rate = float("nan")
    if not rate > 0 or rate == float("inf"):
        raise UserError(f"{where}: env_steps_per_s must be a positive number, got "
                        f"{values['env_steps_per_s']!r}")
    return Rate(**{**values, "defaults_version": version, "env_steps_per_s": rate})


def append_rate(path: str | Path, rate: Rate) -> None:
    """Add a row (the header too, for a new table); checked as read_rates would read it."""
    path = Path(path)
    row = {f.name: getattr(rate, f.name) for f in fields(Rate)}
    _parse_rate({k: str(v) for k, v in row.items()}, f"new row for {path}")
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=RATE_COLUMNS, lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerow({**row, "env_steps_per_s": f"{rate.env_steps_per_s:.0f}"})


# ---------------------------------------------------------------------------------------
# Planned runs and their rates
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedRun:
    agent: str
    env: str
    seed: int
    variant: str  # "" for a main run, else the ablation variant (run directory agent--variant)
    steps: int  # the env-step budget, resolved (the package's where the config gives none)
    defaults_version: int  # the agent's defaults version now
    overrides: tuple[str, ...]  # the run's --set key=value pairs

    @property
    def agent_dir(self) -> str:
        return f"{self.agent}--{self.variant}" if self.variant else self.agent


def parse_runs(runs: object) -> list[PlannedRun]:
    """Runs as JSON objects (`trmrl validate`'s input plus `variant` and `defaults_version`,
    with `steps` resolved)."""
    if not isinstance(runs, list):
        raise UserError("plan: stdin is not a JSON list of runs")
    planned = []
    for run in runs:
        try:
            planned.append(PlannedRun(
                agent=_typed(run, "agent", str), env=_typed(run, "env", str),
                seed=_typed(run, "seed", int), variant=_typed(run, "variant", str, ""),
                steps=_typed(run, "steps", int), defaults_version=_typed(run, "defaults_version", int),
                overrides=tuple(_typed(run, "set", list, []))))
        except (TypeError, AttributeError):
            raise UserError(f"plan: {run!r} is not a run (a JSON object)") from None
        if planned[-1].steps <= 0:
            raise UserError(f"plan: {run!r}: steps must be a positive integer")
    return planned


def _typed(run: dict, key: str, kind: type, default: object = None):
    value = run.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        raise UserError(f"plan: run {run!r}: `{key}` must be a JSON "
                        f"{ {str: 'string', int: 'integer', list: 'list'}[kind] }")
    return value


@dataclass(frozen=True)
class RateChoice:
    """The rate a plan row uses, whether its hours count in the total, and why."""

    rate: Rate | None
    counted: bool  # False: the row is unknown (its hours, if shown, are no estimate)
    note: str


def _preference(rate: Rate) -> tuple:
    """Whole runs before first iterations, then the newest measurement."""
    return (rate.measured == "whole run", rate.date)


def choose_rate(rates: list[Rate], machine: str, agent: str, env: str,
                defaults_version: int) -> RateChoice:
    mine = [r for r in rates if r.machine == machine and r.agent == agent]
    body = ENV_BODIES.get(env)
    same_env = [r for r in mine if r.env == env]
    same_body = [r for r in mine if r.env != env and body is not None
                 and ENV_BODIES[r.env] == body]
    current = [r for r in same_env if r.defaults_version == defaults_version]
    if current:
        best = max(current, key=_preference)
        return RateChoice(best, True, best.describe())
    borrowed = [r for r in same_body if r.defaults_version == defaults_version]
    if borrowed:
        best = max(borrowed, key=_preference)
        return RateChoice(best, True, f"{best.describe()}; of {best.env} (same body), not "
                                      f"measured on {env}")
    older = same_env or same_body
    if older:  # shown for orientation, never counted: other defaults can cost otherwise
        best = max(older, key=lambda r: (r.env == env, r.defaults_version, *_preference(r)))
        of = "" if best.env == env else f" of {best.env}"
        return RateChoice(best, False, f"unknown: no rate for defaults v{defaults_version}; "
                                       f"h/run in () from the v{best.defaults_version} rate{of} "
                                       f"({best.describe()}), which is not a "
                                       f"v{defaults_version} rate")
    elsewhere = sorted({r.machine for r in rates if r.agent == agent and r.machine != machine
                        and ENV_BODIES[r.env] == body})
    hint = f"; measured on {', '.join(elsewhere)}" if elsewhere else ""
    return RateChoice(None, False, f"unknown: no rate for {agent} on {env} or an env of the same "
                                   f"body on {machine}{hint}")


@dataclass(frozen=True)
class PlanRow:
    agent_dir: str
    env: str
    steps: int
    runs: int
    overrides: tuple[str, ...]  # the --set values of the row's runs (the first run's)
    choice: RateChoice

    @property
    def hours_per_run(self) -> float | None:
        rate = self.choice.rate
        return None if rate is None else self.steps / rate.env_steps_per_s / 3600

    @property
    def hours(self) -> float | None:
        per_run = self.hours_per_run
        return None if per_run is None else per_run * self.runs


def plan_rows(runs: list[PlannedRun], rates: list[Rate], machine: str) -> list[PlanRow]:
    """One row per agent (or ablation variant) x env x budget, in the order of the runs."""
    groups: dict[tuple, list[PlannedRun]] = {}
    for run in runs:
        groups.setdefault((run.agent_dir, run.env, run.steps), []).append(run)
    rows = []
    for (agent_dir, env, steps), members in groups.items():
        first = members[0]
        choice = choose_rate(rates, machine, first.agent, env, first.defaults_version)
        rows.append(PlanRow(agent_dir, env, steps, len(members), first.overrides, choice))
    return rows


def machine_kinds(rates: list[Rate]) -> list[str]:
    return sorted({r.machine for r in rates})


def check_machine(rates: list[Rate], machine: str, rates_path: str | Path) -> None:
    kinds = machine_kinds(rates)
    if machine not in kinds:
        raise UserError(f"unknown machine kind {machine!r}; the rates table {rates_path} has: "
                        f"{', '.join(kinds) or 'no rows'}")


@dataclass(frozen=True)
class Totals:
    runs: int
    counted_runs: int  # runs with a rate of their defaults version
    borrowed_runs: int  # ... of which on another env's rate
    hours: float  # of the counted runs

    @property
    def unknown_runs(self) -> int:
        return self.runs - self.counted_runs


def totals(rows: list[PlanRow]) -> Totals:
    counted = [row for row in rows if row.choice.counted]
    return Totals(runs=sum(row.runs for row in rows),
                  counted_runs=sum(row.runs for row in counted),
                  borrowed_runs=sum(row.runs for row in counted
                                    if row.choice.rate.env != row.env),
                  hours=sum(row.hours for row in counted))


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------
def _shown(path: str | Path) -> str:
    """A path below the working directory relative to it (the workflow passes absolute ones)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _hours(value: float | None, counted: bool) -> str:
    if value is None:
        return "?"
    return f"{value:.2f}" if counted else f"({value:.2f})"


def format_plan(rows: list[PlanRow], machine: str, rates_path: str | Path) -> str:
    agent_width = max([len("agent")] + [len(row.agent_dir) for row in rows])
    env_width = max([len("env")] + [len(row.env) for row in rows])
    header = (f"{'agent':<{agent_width}} {'env':<{env_width}} {'steps/run':>12} {'runs':>4} "
              f"{'h/run':>8} {'h total':>8}  rate used")
    lines = [f"cost plan on {machine} (rates: {_shown(rates_path)}): training runs one after "
             "another, each at its measured rate; evaluation not included", header,
             "-" * len(header)]
    for row in rows:
        note = row.choice.note
        if row.overrides and row.choice.rate is not None:
            note += f"; measured with the defaults, these runs --set {' '.join(row.overrides)}"
        total = row.hours if row.choice.counted else None
        lines.append(f"{row.agent_dir:<{agent_width}} {row.env:<{env_width}} {row.steps:>12,} "
                     f"{row.runs:>4} "
                     f"{_hours(row.hours_per_run, row.choice.counted):>8} "
                     f"{_hours(total, True):>8}  {note}")
    lines.append(summary_line(totals(rows), machine))
    return "\n".join(lines)


def summary_line(total: Totals, machine: str) -> str:
    line = (f"total on {machine}: {total.hours:,.1f} h for {total.counted_runs} of "
            f"{total.runs} runs")
    if total.borrowed_runs:
        line += f" ({total.borrowed_runs} of them at another env's rate)"
    if total.unknown_runs:
        line += f"; {total.unknown_runs} runs unknown (no rate: not in the total)"
    return line


def format_overview(runs: list[PlannedRun], rates: list[Rate], rates_path: str | Path) -> str:
    """Without a machine kind: the grid's size and each measured kind's total, one line each."""
    steps = sum(run.steps for run in runs)
    lines = [f"cost plan: {len(runs)} training runs, {steps / 1e9:,.2f}G env steps in all; "
             f"totals per machine kind of {_shown(rates_path)} (training only, one run after another):"]
    for kind in machine_kinds(rates):
        lines.append("  " + summary_line(totals(plan_rows(runs, rates, kind)), kind))
    lines.append("  per agent x env: `snakemake -n --config plan_machine=KIND` "
                 "(or `trmrl plan --machine KIND`)")
    return "\n".join(lines)
