"""Shared by every rule: the config checks the schema cannot do, and the table of runs.

A *run* is one `trmrl train` of one agent on one env with one seed, in
results/<experiment>/runs/<env>/<agent dir>/seed<seed>[-rev<R>]/ where <agent dir> is the
agent's name, or `<agent>--<variant>` for an ablation variant (e.g. `trmrl--layers-2`).
"""

import importlib.util
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


# ---------------------------------------------------------------------------------------
# The config
# ---------------------------------------------------------------------------------------
def config_error(path, message):
    """The one-line error for a bad config value at a key path like `steps.cheetah-vel`."""
    where = ".".join(str(p) for p in path)
    return WorkflowError(f"invalid config{f' at `{where}`' if where else ''}: {message}")


def most_specific(error):
    """Of the alternatives of a oneOf/anyOf error, the one that says most: the deepest key,
    then a value error (minimum, enum) over a type mismatch with another alternative."""
    while error.context:
        error = max(error.context, key=lambda e: (len(e.absolute_path),
                                                  e.validator not in ("type", "const"),
                                                  e.validator == "enum", _same_kind(e)))
    return error


def _same_kind(error):
    """A type error whose expected type is of the value's kind (1000.5 vs integer, not object)."""
    if error.validator != "type" or isinstance(error.instance, bool):
        return False
    numbers = ("integer", "number")
    return isinstance(error.instance, (int, float)) and error.validator_value in numbers


def validate_config(config, schema):
    """Validate against the JSON schema (filling its defaults); the error names the key path."""
    try:
        validate(config, schema)
    except WorkflowError as error:
        cause = error.__context__  # snakemake wraps jsonschema's error
        if not isinstance(cause, jsonschema.ValidationError):
            raise
        best = most_specific(cause)
        message = best.message
        if best.validator == "additionalProperties" and "properties" in best.schema:
            message += f"; valid keys: {', '.join(best.schema['properties'])}"
        if best.validator == "type" and isinstance(best.instance, str):
            message += " (`--config` reads integers, True and False; anything else is a string)"
        raise config_error(best.absolute_path, message) from None


def trmrl_executable():
    """`trmrl` next to this Python (snakemake and the package share a venv), else on PATH."""
    beside = Path(sys.executable).parent / "trmrl"
    found = str(beside) if beside.exists() else shutil.which("trmrl")
    if found is None:
        raise WorkflowError("`trmrl` is not installed: pip install -e . in snakemake's environment")
    return found


def query_cli(executable):
    """`trmrl envs --json` and `trmrl agents --json`, run side by side (each ~1.5 s)."""
    commands = {"envs": [executable, "envs", "--json"], "agents": [executable, "agents", "--json"]}
    processes = {name: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
                 for name, command in commands.items()}
    answers = {}
    for name, process in processes.items():
        out, err = process.communicate()
        if process.returncode != 0:
            raise WorkflowError(f"`trmrl {name} --json` failed: {err.strip()}")
        answers[name] = json.loads(out)
    envs = {info["name"]: info for info in answers["envs"]}
    agents = {info["name"]: info for info in answers["agents"]["agents"]}
    return envs, agents, answers["agents"]["not_implemented"]


def check_agents_implemented(config, agents, planned):
    """The schema knows every agent of the design; only the implemented ones can train."""
    named = [("agents", i, a) for i, a in enumerate(config["agents"])]
    if config["ablations"].get("studies"):
        named.append(("ablations", "agent", config["ablations"]["agent"]))
    for *path, agent in named:
        if agent not in agents:
            status = "is not implemented yet" if agent in planned else "is unknown"
            raise config_error(path, f"agent {agent!r} {status}; available agents: "
                               f"{', '.join(agents)}")


def check_hyperparameter(path, key, value, agent_info, env):
    """Key and type of one --set value, against the agent's defaults (`trmrl agents --json`)."""
    if key == "steps":
        raise config_error(path, "set budgets with the top-level `steps:` (per env) or `agent_steps:` (per agent)")
    if key not in agent_info["keys"]:
        raise config_error(path, f"{agent_info['name']} has no hyperparameter {key!r}; valid: "
                           f"{', '.join(agent_info['keys'])}")
    default = agent_info["defaults"][env][key]
    expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,), list: (list,)}
    kind = next((k for k in expected if type(default) is k), None)
    if kind is None:
        return  # None defaults (horizon, ...): trmrl train checks the value
    if isinstance(value, expected[kind]) and not (isinstance(value, bool) and kind is not bool):
        return
    hint = ""
    scientific = isinstance(value, str) and re.fullmatch(r"[-+]?[\d.]+e[-+]?\d+", value)
    if scientific and kind in (int, float):
        hint = " (YAML reads 1e-4 as a string: write 1.0e-4)"
    raise config_error(path, f"{value!r} is not a valid {key}: {agent_info['name']}'s default "
                       f"is {default!r} ({kind.__name__}){hint}")


def check_hyperparameters(config, agents):
    grid_agents = set(config["agents"])
    if config["ablations"].get("studies"):
        grid_agents.add(config["ablations"]["agent"])
    for scope, by_env in config["hyperparameters"].items():
        if scope != "all" and scope not in agents:
            raise config_error(["hyperparameters", scope], f"agent {scope!r} is unknown; "
                               f"available agents: {', '.join(agents)}")
        # agents outside the grid may keep settings for later
        targets = sorted(grid_agents) if scope == "all" else [scope] if scope in grid_agents else []
        for env_key, values in by_env.items():
            env = config["envs"][0] if env_key == "default" else env_key
            for key, value in values.items():
                path = ["hyperparameters", scope, env_key, key]
                if scope == "all":  # every agent that has the key (PPO's epochs: not MAML)
                    having = [a for a in targets if key in agents[a]["keys"]]
                    if not having and key != "steps":
                        raise config_error(path, f"no agent of the grid ({', '.join(targets)}) "
                                           f"has a hyperparameter {key!r}")
                    targets_of_key = having or targets
                else:
                    targets_of_key = targets
                for agent in targets_of_key:
                    check_hyperparameter(path, key, value, agents[agent], env)
    ablations = config["ablations"]
    for study, grid in ablations.get("studies", {}).items():
        for key, values in grid.items():
            for value in values:
                check_hyperparameter(["ablations", "studies", study, key], key, value,
                                     agents[ablations["agent"]], ablations["env"])


def check_runs_resolve(executable, runs):
    """Every planned run's hyperparameters as `trmrl train` resolves and validates them
    (ranges, finiteness, sizes): a bad value fails here, before any job starts."""
    plan = [{"agent": run.agent, "env": run.env, "seed": run.seed, "steps": run.steps,
             "set": [f"{k}={yaml_scalar(v)}" for k, v in run.overrides]} for run in runs]
    result = subprocess.run([executable, "validate"], input=json.dumps(plan), text=True,
                            capture_output=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["(no message)"]
        raise WorkflowError(f"invalid config: {lines[-1].removeprefix('trmrl: error: ')}")


def print_cost_plan(executable, runs):
    """A dry run prints the expected hours of the runs (`trmrl plan`, from the measured rates
    of benchmarks/rates.csv) on the machine kind `plan_machine`, or each kind's total."""
    rates = Path(workflow.basedir) / "benchmarks" / "rates.csv"
    machine = config["plan_machine"]
    if not rates.exists() and machine is None:  # a copy of the workflow without benchmarks/
        print(f"cost plan: no rates table at {rates}")
        return
    plan = [{"agent": run.agent, "env": run.env, "seed": run.seed, "variant": run.variant,
             "steps": run.steps or AGENTS[run.agent]["defaults"][run.env]["steps"],
             "defaults_version": AGENTS[run.agent]["defaults_version"],
             "set": [f"{k}={yaml_scalar(v)}" for k, v in run.overrides]} for run in runs]
    command = [executable, "plan", "--rates", str(rates)]
    command += ["--machine", machine] if machine is not None else []
    result = subprocess.run(command, input=json.dumps(plan), text=True, capture_output=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["(no message)"]
        raise config_error(["plan_machine"], lines[-1].removeprefix("trmrl: error: "))
    print(result.stdout, end="")
    if config["seeds_per_job"] > 1 and POPULATION_JOBS:
        print(f"cost plan: the hours are each run's alone; with seeds_per_job: "
              f"{config['seeds_per_job']} some seeds share a job (above), whose speed the rates "
              "table does not measure, so the plan does not count it")


# ---------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------
def yaml_scalar(value):
    """A value as `trmrl train --set` parses it back (YAML): 3e-05 -> 3.0e-05, True -> true."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def run_overrides(config, agent, env):
    """The config's hyperparameters of (agent, env), in override order; `all` gives each
    agent the keys it has."""
    values = {}
    for scope in ("all", agent):
        by_env = config["hyperparameters"].get(scope, {})
        for part in (by_env.get("default", {}), by_env.get(env, {})):
            values.update({k: v for k, v in part.items()
                           if scope != "all" or k in AGENTS[agent]["keys"]})
    return values


def revision(config, agent):
    rev = config["train_revision"]
    return rev if isinstance(rev, int) else rev.get(agent, 0)


@dataclass(frozen=True, eq=False)
class Run:
    agent: str  # what `trmrl train --agent` gets
    env: str
    seed: int
    variant: str  # "" for a main run, else the ablation variant, e.g. "layers-2"
    revision: int
    overrides: tuple  # ((key, value), ...) for --set, later ones win
    steps: int | None  # None: the package's (paper) budget

    @property
    def agent_dir(self):
        return f"{self.agent}--{self.variant}" if self.variant else self.agent

    @property
    def name(self):
        """`<env>/<agent dir>/seed<S>[-rev<R>]`, the run directory below runs/."""
        suffix = f"-rev{self.revision}" if self.revision else ""
        return f"{self.env}/{self.agent_dir}/seed{self.seed}{suffix}"

    @property
    def path(self):
        return f"{RESULTS}/runs/{self.name}"

    def set_args(self):
        return " ".join(f"--set {shlex.quote(f'{k}={yaml_scalar(v)}')}" for k, v in self.overrides)

    def record(self):
        """What aggregation scripts get (through params) about each run."""
        return {"agent": self.agent, "env": self.env, "seed": self.seed, "variant": self.variant,
                "path": self.path, "name": self.name}


def variant_name(values):
    """{"tfixup": False, "layernorm": True} -> "no-tfixup-layernorm"; {"layers": 2} ->
    "layers-2"; lists join with x: {"hidden": [64, 64]} -> "hidden-64x64"."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            parts.append(key if value else f"no-{key}")
        elif isinstance(value, list):
            parts.append(f"{key}-{'x'.join(yaml_scalar(v) for v in value)}")
        else:
            parts.append(f"{key}-{yaml_scalar(value)}")
    return "-".join(parts)


def budget(config, agent, env):
    """The env-step budget of (agent, env); None: the package's budget (`trmrl agents`).

    `steps:` is one budget for every env or per env; `agent_steps:` replaces it for an agent
    (one integer, per env, or null for the agent's package budgets)."""
    steps = config["steps"]
    agent_steps = config.get("agent_steps", {})
    if agent in agent_steps:
        own = agent_steps[agent]
        if own is None or isinstance(own, int):
            return own
        if env in own:
            return own[env]
    return steps if isinstance(steps, int) else steps.get(env)


def plan_main_runs(config):
    return [Run(agent, env, seed, "", revision(config, agent),
                tuple(run_overrides(config, agent, env).items()), budget(config, agent, env))
            for agent in config["agents"] for env in config["envs"] for seed in config["seeds"]]


def plan_ablations(config, agents):
    """[{study, variant, label, values, runs}] for every grid point of every study.

    A grid point whose values equal what the main run of (agent, env) uses anyway (package
    defaults + config overrides) *is* that main run: it is not trained twice.
    """
    ablations = config["ablations"]
    if not ablations.get("studies"):
        return []
    agent, env = ablations["agent"], ablations["env"]
    seeds = ablations.get("seeds", config["seeds"])
    base = run_overrides(config, agent, env)
    effective = {**agents[agent]["defaults"][env], **base}
    points = []
    for study, grid in ablations["studies"].items():
        for combination in itertools.product(*grid.values()):
            values = dict(zip(grid, combination))
            is_main = all(effective.get(k) == v for k, v in values.items())
            variant = "" if is_main else variant_name(values)
            overrides = base if is_main else {**base, **values}
            runs = [Run(agent, env, seed, variant, revision(config, agent),
                        tuple(overrides.items()), budget(config, agent, env))
                    for seed in seeds]
            points.append({"study": study, "variant": variant_name(values), "values": values,
                           "default": is_main, "runs": runs})
    return points


def index_runs(runs):
    """path -> run, in plan order; two configurations in one run directory are an error
    (`trmrl train` would refuse to resume it)."""
    by_path = {}
    for run in runs:
        other = by_path.setdefault(run.path, run)
        if other.overrides != run.overrides:
            raise WorkflowError(f"ablation variants collide in {run.path}: "
                                f"{dict(other.overrides)} vs {dict(run.overrides)}")
    return by_path


def is_trained(run):
    return os.path.exists(f"{run.path}/train.done")


@dataclass(frozen=True, eq=False)
class PopulationJob:
    """Several seeds of one agent x env (x ablation variant, x revision) trained in one job,
    `trmrl train --seed S1 S2 ... --out <env>/<agent dir>/seed{seed}[-rev<R>]` (`seeds_per_job`)."""

    runs: tuple  # its Runs, in plan order

    @property
    def seeds(self):
        return [run.seed for run in self.runs]

    @property
    def suffix(self):
        return f"-rev{self.runs[0].revision}" if self.runs[0].revision else ""

    @property
    def rule_name(self):
        """train_<agent dir>_<env>_seeds_<S1>_<S2>...[_rev<R>], letters, digits and _ only."""
        run = self.runs[0]
        name = f"train_{run.agent_dir}_{run.env}_seeds_{'_'.join(map(str, self.seeds))}"
        return re.sub(r"\W", "_", name + self.suffix.replace("-", "_"))

    @property
    def out(self):
        """--out: each seed's run directory, {seed} for the seed."""
        run = self.runs[0]
        return f"{RESULTS}/runs/{run.env}/{run.agent_dir}/seed{{seed}}{self.suffix}"

    @property
    def log(self):
        run = self.runs[0]
        seeds = "-".join(map(str, self.seeds))
        return f"{LOGS}/train/{run.env}/{run.agent_dir}/seeds{seeds}{self.suffix}.log"


def plan_population_jobs(runs, seeds_per_job):
    """The jobs that train several seeds at once: the runs of one run directory but for the
    seed, in groups of `seeds_per_job`, for agents that support populations (`trmrl agents
    --json`: population null). A group of one stays a job of the `train` rule."""
    if seeds_per_job == 1:
        return []
    groups = {}
    for run in runs:
        if AGENTS[run.agent]["population"] is None:
            groups.setdefault((run.env, run.agent_dir, run.revision), []).append(run)
    jobs = []
    for members in groups.values():
        for first in range(0, len(members), seeds_per_job):
            chunk = tuple(members[first:first + seeds_per_job])
            if len(chunk) > 1:
                jobs.append(PopulationJob(chunk))
    names = [job.rule_name for job in jobs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # ablation variants whose names differ only in punctuation
        raise WorkflowError(f"two population jobs would be rule {repeated[0]}; use "
                            "seeds_per_job: 1 or rename the ablation study's values")
    return jobs


def print_population_plan(jobs, runs):
    """A dry run says which runs train together and which agents train one seed per job."""
    per_job = config["seeds_per_job"]
    if per_job == 1:
        return
    alone = {run.agent: AGENTS[run.agent]["population"] for run in runs
             if AGENTS[run.agent]["population"] is not None}
    together = sum(len(job.runs) for job in jobs)
    print(f"seeds_per_job: {per_job}: {together} runs train in {len(jobs)} jobs of several "
          f"seeds (`trmrl train --seed S1 S2 ...`, one process each); the other "
          f"{len(runs) - together} runs one seed per job")
    for agent, reason in alone.items():
        print(f"  {agent}: one seed per job ({reason})")


def population_resource(job, key):
    """A population job's resource `key`: what one of its runs asks for (`resources.train`,
    per env; a profile's `set-resources: train` wins) times its seeds for CPUs, memory and
    time, unchanged for GPUs and everything else (one GPU is shared by the seeds)."""
    spec = config["resources"]["train"]
    env = job.runs[0].env
    value = spec.get("envs", {}).get(env, {}).get(key, spec[key])
    name = "cpus_per_task" if key == "cpus" else key
    if isinstance(train_overrides().get(name), int):
        value = train_overrides()[name]
    if key == "gpu":
        return max(value, 1 if str(config["device"]).startswith("cuda") else 0)
    return value * len(job.runs)


def constant(value):
    """A params value that snakemake passes on as it is (a string would be formatted with
    wildcards, and --out holds a literal {seed})."""
    return lambda wildcards: value


def train_overrides():
    """`set-resources: train:` of the profile or command line, as written there."""
    overrides = (workflow.resource_settings.overwrite_resources or {}).get("train", {})
    return {name: getattr(value, "raw", value) for name, value in overrides.items()}


def train_profile_resources():
    """What a profile sets for `train` jobs that population jobs take as they are (the
    partition, the GPU model, the account...): all but the sizes, which
    population_resource scales."""
    return {key: value for key, value in train_overrides().items()
            if key not in ("cpus_per_task", "mem_mb", "mem", "runtime", "gpu")}


# ---------------------------------------------------------------------------------------
# Helpers the rules use
# ---------------------------------------------------------------------------------------
def run_of(wildcards):
    """The planned run behind a rule's wildcards (a path outside the plan is an error)."""
    path = (f"{RESULTS}/runs/{wildcards.env}/{wildcards.agent}/seed{wildcards.seed}"
            f"{wildcards.rev}")
    if path not in RUNS_BY_PATH:
        raise WorkflowError(f"{path} is not a run of this config (experiment "
                            f"{config['experiment']!r}); see `agents`, `envs`, `seeds`, "
                            "`ablations`")
    return RUNS_BY_PATH[path]


def job_resources(kind, key):
    """Resource `key` of a train/evaluate job on the job's env (`resources.<kind>.envs` wins).
    A job that runs on cuda (`device`) asks for at least one `gpu`: on SLURM that is its GPU."""
    spec = config["resources"][kind]
    least = 1 if key == "gpu" and str(config["device"]).startswith("cuda") else 0

    def lookup(wildcards):
        value = spec.get("envs", {}).get(wildcards.env, {}).get(key, spec[key])
        return max(value, least) if key == "gpu" else value

    return lookup


# ---------------------------------------------------------------------------------------
# Where train and evaluate jobs run: a GPU slot and CPUs of their own (local runs)
# ---------------------------------------------------------------------------------------
def load_run_job():
    """workflow/scripts/run_job.py, which runs every train and evaluate job, as a module: its
    `gpus` checks are the workflow's."""
    spec = importlib.util.spec_from_file_location("run_job", SCRIPTS / "run_job.py")
    run_job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_job)
    return run_job


def job_gpus(config):
    """The `gpus` of local jobs ("all" or ids); None where jobs run on the CPU. `device:
    cuda:N` is GPU N alone."""
    device = str(config["device"])
    try:
        gpus = RUN_JOB.parse_gpus(config["gpus"])
    except RUN_JOB.SlotError as error:
        raise WorkflowError(str(error)) from None
    if device.startswith("cuda:"):
        own = int(device.split(":")[1])
        if gpus not in ("all", [own]):
            raise config_error(["gpus"], f"{gpus} and `device: {device}` disagree; for several "
                               f"GPUs use `device: cuda` with `gpus: {gpus}`")
        return [own]
    return gpus if device in ("cuda", "auto") else None


def job_launcher():
    """The start of a train / evaluate job's command: run_job.py with what the job holds
    locally. A cluster job runs on the GPUs and CPUs that SLURM gave it."""
    script = os.path.relpath(SCRIPTS / "run_job.py")
    script = str(SCRIPTS / "run_job.py") if script.startswith("..") else script  # -s elsewhere
    words = [sys.executable, script]
    if not workflow.remote_exec:
        words.append("--pin")
        if JOB_GPUS is not None:
            words += ["--gpus", JOB_GPUS if JOB_GPUS == "all" else ",".join(map(str, JOB_GPUS)),
                      "--jobs-per-gpu", str(config["jobs_per_gpu"])]
    return " ".join(shlex.quote(word) for word in words) + " --threads {threads}"


def job_device():
    """--device of train / evaluate jobs: a local job sees only its own GPU, as cuda:0."""
    device = str(config["device"])
    return "cuda" if device.startswith("cuda:") and not workflow.remote_exec else device


def check_local_gpus():
    """Before the first local job: `gpus` against this machine's GPUs (an id it lacks, or
    `device: cuda` where there is none), one line naming the key."""
    jobs = {job.rule.name for job in workflow.dag.needrun_jobs()}
    if JOB_GPUS is None or not jobs & {*TRAIN_RULES, "evaluate_adaptation", "evaluate_ood"}:
        return  # e.g. figures from runs trained elsewhere
    try:
        gpus = RUN_JOB.resolve_gpus(JOB_GPUS)
    except RUN_JOB.SlotError as error:
        raise WorkflowError(str(error)) from None
    device = str(config["device"])
    if not gpus and device.startswith("cuda"):
        _, source = RUN_JOB.machine_gpus()
        raise config_error(["device"], f"{device!r} needs a GPU, but this machine has none "
                           f"({source}); use cpu or auto")


def has_ood(env):
    return "ood" in ENVS[env]["splits"]


def used(runs):
    """The runs that aggregation uses: all of them, or (allow_partial) the trained ones."""
    return [r for r in runs if is_trained(r)] if config["allow_partial"] else list(runs)


def missing(runs):
    return [r.name for r in runs if not is_trained(r)] if config["allow_partial"] else []


def run_files(runs, name):
    return [f"{run.path}/{name}" for run in runs]


def markers(runs):
    """Inputs of aggregation: the train markers of the runs it uses."""
    return run_files(used(runs), "train.done")


def evaluations(runs, name):
    return run_files(used(runs), f"eval/{name}")


def table(name):
    return f"{RESULTS}/tables/{name}.csv"


def figure(name, ext):
    return f"{RESULTS}/figures/{name}.{ext}"


def figure_outputs(name, title):
    """PDF for papers, PNG for the report (with its caption, workflow/report/<name>.rst)."""
    return {
        "pdf": figure(name, "pdf"),
        "png": report(figure(name, "png"), caption=f"../report/{name}.rst",
                      category="Figures", labels={"figure": title}),
    }


def script_input(name):
    """A helper module of the scripts, as an input: editing it re-renders its users
    (snakemake tracks a `script:` file itself, not the modules it imports)."""
    return str(SCRIPTS / name)


def analysis_params():
    """What every aggregation script needs to know besides its input files."""
    return {"statistics": config["statistics"], "allow_partial": config["allow_partial"],
            "envs": {env: ENVS[env] for env in dict.fromkeys(RUN_ENVS)},  # panel order
            "agents": config["agents"]}


# ---------------------------------------------------------------------------------------
# The plan (computed once per snakemake invocation)
# ---------------------------------------------------------------------------------------
# first of all: reject a bad config before any job, with the key path (defaults filled in)
validate_config(config, "../schemas/config.schema.yaml")

RESULTS = f"results/{config['experiment']}"
LOGS = f"{RESULTS}/logs"
SCRIPTS = Path(workflow.basedir) / "workflow" / "scripts"
TRMRL = trmrl_executable()
RUN_JOB = load_run_job()
JOB_GPUS = job_gpus(config)
JOB = job_launcher()
# jobs find `trmrl` even when snakemake was started by path from an unactivated venv
shell.prefix(f"set -euo pipefail; export PATH={shlex.quote(str(Path(TRMRL).parent))}:\"$PATH\"; ")

ENVS, AGENTS, PLANNED_AGENTS = query_cli(TRMRL)
check_agents_implemented(config, AGENTS, PLANNED_AGENTS)


wildcard_constraints:
    env="|".join(ENVS),
    agent=r"[a-z][a-z0-9_]*(--[A-Za-z0-9_.+-]+)?",  # <agent> or <agent>--<ablation variant>
    seed=r"\d+",
    rev=r"(-rev[1-9]\d*)?",  # empty at train_revision 0


check_hyperparameters(config, AGENTS)

MAIN_RUNS = plan_main_runs(config)
ABLATIONS = plan_ablations(config, AGENTS)
ABLATION_RUNS = [run for point in ABLATIONS for run in point["runs"]]
RUNS_BY_PATH = index_runs(MAIN_RUNS + ABLATION_RUNS)
ALL_RUNS = list(RUNS_BY_PATH.values())
RUN_ENVS = [run.env for run in ALL_RUNS]
check_runs_resolve(TRMRL, ALL_RUNS)
# seeds_per_job > 1: the seeds that train together, one job (rule) each
POPULATION_JOBS = plan_population_jobs(ALL_RUNS, config["seeds_per_job"])
TRAIN_RULES = ["train", *(job.rule_name for job in POPULATION_JOBS)]
if workflow.output_settings.dryrun:  # known at parse time; onstart does not run in dry runs
    print_population_plan(POPULATION_JOBS, ALL_RUNS)
    print_cost_plan(TRMRL, ALL_RUNS)
OOD_RUNS = [run for run in MAIN_RUNS if has_ood(run.env)]
REFERENCE_AGENTS = ("oracle", "memoryless")
HAS_REFERENCES = all(agent in config["agents"] for agent in REFERENCE_AGENTS)

# what `all` builds: a figure (and its table) only where the config gives it data
FIGURES = ["fig1_training_curves", "fig2_adaptation"]
TABLES = ["training_curves_by_seed", "training_curves", "adaptation_by_task", "adaptation"]
if OOD_RUNS:
    FIGURES.append("fig3_ood")
    TABLES += ["ood_by_task", "ood"]
if ABLATIONS:
    FIGURES.append("fig4_ablations")
    TABLES += ["ablations_by_seed", "ablations"]
FIGURES.append("fig5_latent_map")
if HAS_REFERENCES:
    FIGURES.append("fig6_aggregate")
    TABLES += ["normalized_scores", "aggregate_scores", "probability_of_improvement"]
FIGURE_FILES = [figure(name, ext) for name in FIGURES for ext in ("pdf", "png")]
REPORT_CAPTIONS = [str(Path(workflow.basedir) / "workflow" / "report" / f"{name}.rst")
                   for name in [*FIGURES, "tables", "workflow"]]
TABLE_FILES = [table(name) for name in TABLES]
