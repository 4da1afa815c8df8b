"""The `trmrl` command line. Bad input exits with code 2 and one line naming the bad value."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from trmrl.envs import ENV_NAMES, SPLITS, make_suite
from trmrl.errors import Terminated, TrainingDiverged, UserError


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise UsageError(message)


def _integer(name: str):
    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
    return parse


def _positive_integer(name: str):
    def parse(text: str) -> int:
        value = _integer(name)(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {text!r}")
        return value
    return parse


def _bounded_integer(name: str, limit: int):
    def parse(text: str) -> int:
        value = _positive_integer(name)(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"{name} must be at most {limit}, got {text!r}")
        return value
    return parse


def _seed(text: str) -> int:
    from trmrl.config import MAX_SEED

    value = _integer("seed")(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed must be an integer in [0, {MAX_SEED}], got {text!r}")
    return value


def _choice(name: str, valid: tuple[str, ...]):
    def parse(text: str) -> str:
        if text not in valid:
            raise argparse.ArgumentTypeError(f"unknown {name} {text!r}; valid: {', '.join(valid)}")
        return text
    return parse


# ---------------------------------------------------------------------------------------
ENV_NOTES = ("task", "reward", "train", "test", "ood", "done")


def cmd_envs(args) -> None:
    names = [args.name] if args.name else ENV_NAMES
    infos = [make_suite(name).info() for name in names]
    if args.json:
        print(json.dumps(infos[0] if args.name else infos, indent=2))
        return
    if args.name:
        _print_env_notes(infos[0])
        return
    rows = [("env", "obs", "act", "horizon", "episodes", "splits", "score", "task parameter")]
    for info in infos:
        rows.append((info["name"], str(info["obs_dim"]), str(info["act_dim"]), str(info["horizon"]),
                     str(info["episodes_per_trial"]), ", ".join(info["splits"]),
                     "success rate" if info["success_metric"] else "return",
                     _shorten(info["task_param"], 46)))
    _print_table(rows, right_aligned={1, 2, 3, 4})
    print("\nhorizon: steps per episode; episodes: episodes per trial (K), the agent's memory "
          "spans them.\n`trmrl envs NAME`: one env's task distributions, reward, termination "
          "and notes.")


def _print_env_notes(info: dict) -> None:
    print(f"{info['name']}: {info['description']['task']}")
    rows = [("base", info["base"]),
            ("spaces", f"observation {info['obs_dim']}-d, action {info['act_dim']}-d"),
            ("trial", f"{info['episodes_per_trial']} episodes (K) of {info['horizon']} steps"),
            ("score", "success rate (Meta-World's success flag)" if info["success_metric"]
             else "return per episode"),
            ("task value", info["task_param"])]
    rows += [(key, info["description"][key]) for key in ENV_NOTES[1:] if key in info["description"]]
    rows += [("note", quirk) for quirk in info["quirks"]]
    width = max(len(key) for key, _ in rows)
    for key, text in rows:
        print(f"  {key:<{width}}  {text}")


def _print_table(rows: list[tuple[str, ...]], right_aligned: set[int] = frozenset()) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for number, row in enumerate(rows):
        cells = [cell.rjust(w) if i in right_aligned else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        print("  ".join(cells).rstrip())
        if number == 0:
            print("  ".join("-" * w for w in widths))


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def cmd_tasks(args) -> None:
    suite = make_suite(args.env)
    suite.check_split(args.split)
    tasks = suite.tasks(args.split, args.seed, args.n)
    if args.json:
        print(json.dumps([t.to_json() for t in tasks], indent=2))
        return
    sampled = args.split == "train" and suite.description.get("train", "").startswith("sampled")
    note = (f" (first {len(tasks)} of seed {args.seed}'s stream: train tasks are drawn fresh "
            "per trial)" if sampled else "")
    print(f"# {suite.name} {args.split} tasks, seed {args.seed}{note}")
    evaluated = set()
    if args.split != "train":  # evaluation runs on held-out tasks only
        evaluated = {task.index for task in suite.eval_tasks(args.split, args.seed)}
        print(f"# * = one of the {len(evaluated)} tasks `trmrl evaluate` runs on "
              f"({len(evaluated)} of {len(suite.tasks(args.split, args.seed))} in this split)")
    print(f"# value = {suite.task_param}")
    rows = [("", "task", "value", "parameters")]
    for task in tasks:
        rows.append(("*" if task.index in evaluated else "", str(task.index), _number(task.value),
                     "  ".join(f"{key}={_param(value)}" for key, value in task.params.items())))
    _print_table(rows, right_aligned={1, 2})


def _number(value) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:.4g}"


def _param(value) -> str:
    """A task parameter as a reader scans it: numbers to 3 decimals, short vectors in full,
    long ones (e.g. walker-params' per-body exponents) as their size and range."""
    if isinstance(value, (list, tuple)):
        flat = list(_flatten(value))
        if len(flat) <= 6:
            return "(" + ", ".join(_short_float(v) for v in flat) + ")"
        return f"[{len(flat)} values in {_short_float(min(flat))}..{_short_float(max(flat))}]"
    if isinstance(value, float):
        return _short_float(value)
    return str(value)


def _flatten(values):
    for value in values:
        if isinstance(value, (list, tuple)):
            yield from _flatten(value)
        else:
            yield value


def _short_float(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def cmd_rollout(args) -> None:
    """Random-action trials: a smoke test of a suite and of the sampler's speed."""
    from trmrl.sampling import RandomPolicy, TrialSampler

    suite = make_suite(args.env)
    suite.check_split(args.split)
    tasks = suite.eval_tasks(args.split, args.seed, args.trials)
    _, act_space = suite.spaces()
    with TrialSampler(suite, num_envs=len(tasks), horizon=args.horizon,
                      episodes_per_trial=args.episodes, num_workers=args.workers,
                      seed=args.seed) as sampler:
        start = time.perf_counter()
        batch = sampler.run(RandomPolicy(act_space.low, act_space.high, args.seed), tasks)
        elapsed = time.perf_counter() - start
    returns = batch.episode_return.mean(0)
    print(f"{suite.name}: {batch.num_trials} trials x {sampler.episodes_per_trial} episodes x "
          f"horizon {sampler.horizon}, random actions, {batch.env_steps} env steps in "
          f"{elapsed:.2f} s ({batch.env_steps / elapsed:,.0f} steps/s)")
    print("mean return per episode: " + ", ".join(f"{r:.1f}" for r in returns))
    if suite.has_success:
        print("success rate per episode: "
              + ", ".join(f"{s:.2f}" for s in batch.episode_success.mean(0)))


def cmd_agents(args) -> None:
    from trmrl import config as cfg
    from trmrl.agents import AGENT_NAMES, PLANNED, agent_class
    from trmrl.population import population_support

    agents = []
    for name in AGENT_NAMES:
        cls = agent_class(name)
        data = cfg.load_defaults(name)
        # one flat namespace, as --set takes it: trainer settings and hyperparameters
        per_env = {env: cfg.flatten(*cfg.build_run(cls, cfg.env_defaults(name, env)[0]))
                   for env in ENV_NAMES}
        agents.append({"name": name, "defaults_version": data["version"],
                       "doc": (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().split("\n")[0],
                       "keys": sorted(cfg.run_keys(cls)), "defaults": per_env,
                       "presets": data.get("presets") or {},
                       # null: `trmrl train --seed S1 S2 ...` trains seeds in one process
                       "population": population_support(cls)})
    if args.json:
        print(json.dumps({"agents": agents, "not_implemented": list(PLANNED)}, indent=2))
        return
    import torch

    on_cuda = torch.cuda.is_available()
    base_env = args.env or ENV_NAMES[0]
    suite_info = make_suite(base_env).info()
    for agent in agents:
        cls = agent_class(agent["name"])
        holders = cfg.run_keys(cls)
        print(f"{agent['name']} (defaults v{agent['defaults_version']}): {agent['doc']}")
        print(f"  defaults on {base_env}" + ("" if args.env else
                                             " (other envs: differences below; --env E for one)"))
        values = agent["defaults"][base_env]
        for group, keys in _config_groups(cls, on_cuda).items():
            items = [(key, _spelled(holders[key], key, values[key], suite_info)) for key in keys]
            _print_group(group, items)
        if not on_cuda:
            hidden = [key for key in values if key in DEVICE_ONLY]
            if hidden:
                print(f"    ({', '.join(hidden)}: CUDA-only switches, not shown: no CUDA device)")
        if not args.env:
            for env in ENV_NAMES[1:]:
                diff = {k: v for k, v in agent["defaults"][env].items()
                        if values.get(k) != v and (on_cuda or k not in DEVICE_ONLY)}
                if diff:
                    print(f"  on {env}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in diff.items()))
        print("  several seeds in one process (--seed S1 S2 ...): "
              + ("yes" if agent["population"] is None else f"no: {agent['population']}"))
        if agent["presets"]:
            print("  presets (--set preset=NAME), applied over the env's defaults:")
            for preset, overrides in agent["presets"].items():
                print(f"    {preset}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in overrides.items()))
        print()
    if PLANNED:
        print("not implemented yet: " + ", ".join(PLANNED))


# switches that only change how a CUDA device computes (same model, same results up to float
# rounding): shown only where a CUDA device is present
DEVICE_ONLY = ("cuda_graphs", "torch_compile", "tf32")
GROUP_OF_BASE = {"AgentConfig": "trials and evaluation", "PPOConfig": "PPO and update"}
TRAINER_GROUP = "trainer settings (a resume may change them)"


def _config_groups(agent_cls, on_cuda: bool) -> dict[str, list[str]]:
    """An agent's keys grouped by the class that defines them: its hyperparameters' own
    (architecture, and for non-PPO agents their update too), PPO's, every agent's (trials and
    evaluation), then the trainer settings."""
    from trmrl import config as cfg

    config_class = agent_cls.config_class
    own = ("architecture" if any(base.__name__ == "PPOConfig" for base in config_class.__mro__)
           else "architecture and update")
    groups: dict[str, list[str]] = {own: [], "PPO and update": [], "trials and evaluation": [],
                                    TRAINER_GROUP: []}
    if on_cuda:
        groups["on a CUDA device"] = []
    for key, holder in cfg.run_keys(agent_cls).items():
        if key in DEVICE_ONLY:
            if on_cuda:
                groups["on a CUDA device"].append(key)
        elif holder is agent_cls.settings_class:
            groups[TRAINER_GROUP].append(key)
        else:
            groups[GROUP_OF_BASE.get(_defined_in(holder, key).__name__, own)].append(key)
    return {group: keys for group, keys in groups.items() if keys}


def _defined_in(config_class, name: str):
    """The base-most class that declares ``name`` (a subclass may re-declare its default)."""
    for cls in reversed(config_class.__mro__):
        if name in getattr(cls, "__annotations__", {}):
            return cls
    return config_class


def _spelled(config_class, key: str, value, suite_info: dict) -> str:
    """A default as a reader needs it: None as what it means (from the field's comment),
    with the suite's value where it is the suite's."""
    if value is not None:
        return _fmt(value) if value != "" else '""'
    meaning = _none_meaning(_defined_in(config_class, key), key)
    if key in ("horizon", "episodes_per_trial"):
        return f"{suite_info[key]} (the suite's)"
    return f"None ({meaning})" if meaning else "None"


def _none_meaning(cls, key: str) -> str:
    """What ``None`` means for a field, from 'None: ...' in its source comment."""
    import inspect
    import re

    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return ""
    # the field's line with its comment, or the comment lines right above it
    match = re.search(rf"((?:^[ \t]*#.*\n)*)^[ \t]*{re.escape(key)}\s*:.*?(#.*)?$", source,
                      re.MULTILINE)
    if not match:
        return ""
    comment = " ".join(line.strip().lstrip("#").strip()
                       for line in (match.group(1) + (match.group(2) or "")).splitlines())
    found = re.search(r"None\s*[:=]\s*([^;.(]+)", comment)
    return found.group(1).strip().rstrip(",)") if found else ""


def _print_group(group: str, items: list[tuple[str, str]], width: int = 100) -> None:
    """``key value`` pairs in aligned columns under the group's name."""
    key_width = max(len(key) for key, _ in items)
    cell = key_width + 1 + max(len(value) for _, value in items) + 3
    columns = max(1, (width - 4) // cell)
    print(f"  {group}:")
    for start in range(0, len(items), columns):
        row = items[start:start + columns]
        print("    " + "".join(f"{key:<{key_width}} {value}".ljust(cell) for key, value in row)
              .rstrip())


def _fmt(value) -> str:
    if isinstance(value, float) and value and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.2g}"
    return str(value)


SEED_FIELD = "{seed}"  # in --out: each seed's run directory


def run_dirs(out: str, seeds: list[int]) -> list[str]:
    """The run directory of each seed: --out with {seed} replaced. Several seeds need {seed}
    (each trains in its own ordinary run directory) and may not repeat."""
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise UsageError(f"--seed {' '.join(map(str, seeds))}: seed {repeated[0]} is given "
                         "twice; give each seed once")
    if len(seeds) > 1 and SEED_FIELD not in out:
        raise UsageError(f"--out {out}: with several seeds it must hold {SEED_FIELD}, where each "
                         f"seed's run directory differs (e.g. --out runs/cheetah-vel/trmrl/seed"
                         f"{SEED_FIELD})")
    return [out.replace(SEED_FIELD, str(seed)) for seed in seeds]


def cmd_train(args) -> None:
    import logging

    from trmrl import config as cfg
    from trmrl.train import resolve, train_runs

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    directories = run_dirs(args.out, args.seed)
    overrides = cfg.parse_overrides(args.set)
    specs = [resolve(args.agent, args.env, seed, args.steps, args.device, overrides)
             for seed in args.seed]
    train_runs(specs, directories)


def cmd_validate(args) -> None:
    """Resolve planned runs as `trmrl train` would, without training: the workflow's check of
    every hyperparameter value before any job starts. stdin: a JSON list of
    {"agent", "env", "seed", "steps" (null: the package's), "set": ["key=value", ...]}."""
    from trmrl import config as cfg
    from trmrl.train import resolve

    try:
        runs = json.load(sys.stdin)
        if not isinstance(runs, list) or not all(isinstance(run, dict) for run in runs):
            raise ValueError("expected a JSON list of objects")
    except ValueError as error:
        raise UserError(f"validate: stdin is not a JSON list of runs ({error})") from None
    checked = {}  # one check per distinct (agent, env, steps, overrides): seeds only differ
    for run in runs:
        label = f"{run.get('agent')} on {run.get('env')}, seed {run.get('seed')}"
        key = json.dumps({k: v for k, v in run.items() if k != "seed"}, sort_keys=True)
        try:
            seed = run.get("seed")
            if key in checked:
                if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= cfg.MAX_SEED:
                    raise UserError(f"seed must be an integer in [0, {cfg.MAX_SEED}], got {seed!r}")
                continue
            resolve(run["agent"], run["env"], seed, run.get("steps"), "cpu",
                    cfg.parse_overrides(run.get("set", [])))
            checked[key] = True
        except UserError as error:
            raise UserError(f"{label}: {error}") from None
        except (KeyError, TypeError, AttributeError) as error:  # not a run's mapping
            raise UserError(f"validate: {run!r} is not a run ({type(error).__name__}: "
                            f"{error})") from None
    print(f"{len(runs)} runs: hyperparameters valid")


def cmd_plan(args) -> None:
    """The expected hours of planned runs (JSON on stdin, as the workflow writes them) on a
    machine kind, from the measured rates table; without --machine, each kind's total."""
    from trmrl import plan

    try:
        runs = plan.parse_runs(json.load(sys.stdin))
    except ValueError as error:
        raise UserError(f"plan: stdin is not a JSON list of runs ({error})") from None
    rates_path = args.rates or plan.DEFAULT_RATES
    rates = plan.read_rates(rates_path)
    if args.machine is None:
        print(plan.format_overview(runs, rates, rates_path))
        return
    plan.check_machine(rates, args.machine, rates_path)
    print(plan.format_plan(plan.plan_rows(runs, rates, args.machine), args.machine, rates_path))


def cmd_evaluate(args) -> None:
    from trmrl.evaluate import evaluate

    returns = evaluate(args.run, args.protocol, args.out, args.device, episodes=args.episodes,
                       num_tasks=args.tasks, latents=args.latents)
    means = returns.mean(0)
    print(f"{args.protocol}: mean return per episode over {returns.shape[0]} tasks: "
          + ", ".join(f"{m:.1f}" for m in means) + f" -> {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="trmrl", description="trmrl-bench: meta-RL benchmark suite")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    envs = sub.add_parser("envs", help="list the task suites (NAME: one suite's notes)")
    envs.add_argument("name", nargs="?", default=None, type=_choice("env", ENV_NAMES),
                      metavar="NAME", help="show one env: task distributions, reward, notes")
    envs.add_argument("--json", action="store_true")
    envs.set_defaults(func=cmd_envs)

    env_choice = _choice("env", ENV_NAMES)
    split_choice = _choice("split", SPLITS)
    tasks = sub.add_parser("tasks", help="the task parameters of one split")
    tasks.add_argument("--env", required=True, type=env_choice)
    tasks.add_argument("--split", required=True, type=split_choice)
    tasks.add_argument("--seed", required=True, type=_seed)
    # each task is a few hundred bytes: a cap keeps a typo from filling the memory
    tasks.add_argument("--n", type=_bounded_integer("n", 1_000_000), default=None,
                       help="at most this many tasks (sampled train splits: default 20)")
    tasks.add_argument("--json", action="store_true")
    tasks.set_defaults(func=cmd_tasks)

    rollout = sub.add_parser("rollout", help="run random-action trials on a split")
    rollout.add_argument("--env", required=True, type=env_choice)
    rollout.add_argument("--split", default="test", type=split_choice)
    rollout.add_argument("--seed", default=0, type=_seed)
    rollout.add_argument("--trials", default=4, type=_positive_integer("trials"))
    rollout.add_argument("--horizon", default=None, type=_positive_integer("horizon"))
    rollout.add_argument("--episodes", default=None, type=_positive_integer("episodes"))
    rollout.add_argument("--workers", default=0, type=_integer("workers"))
    rollout.set_defaults(func=cmd_rollout)

    agents = sub.add_parser("agents", help="agents and their default hyperparameters per env")
    agents.add_argument("--env", type=env_choice, default=None, help="show one env's defaults")
    agents.add_argument("--json", action="store_true")
    agents.set_defaults(func=cmd_agents)

    train = sub.add_parser("train", help="meta-train an agent (resumes from RUN_DIR)")
    train.add_argument("--agent", required=True)
    train.add_argument("--env", required=True, type=env_choice)
    train.add_argument("--seed", required=True, type=_seed, nargs="+", metavar="SEED",
                       help="one seed, or several: trained at once in one process (a "
                       "population; PPO agents without a recurrent update, see docs/training.md)")
    train.add_argument("--out", required=True, metavar="RUN_DIR",
                       help="the run directory; with several seeds it holds {seed}, e.g. "
                       "runs/cheetah-vel/trmrl/seed{seed}")
    train.add_argument("--steps", type=_positive_integer("steps"), default=None,
                       help="env-step budget (default: the paper's for this env)")
    train.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a hyperparameter (repeatable); see `trmrl agents`")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="run an evaluation protocol on a trained run")
    evaluate.add_argument("--run", required=True, metavar="RUN_DIR")
    evaluate.add_argument("--protocol", required=True,
                          type=_choice("protocol", ("adaptation", "ood")))
    evaluate.add_argument("--out", required=True, metavar="FILE.csv")
    evaluate.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    evaluate.add_argument("--tasks", type=_positive_integer("tasks"), default=20,
                          help="held-out tasks (default 20, the paper's protocol)")
    evaluate.add_argument("--episodes", type=_positive_integer("episodes"), default=6,
                          help="consecutive episodes per task, memory kept (default 6)")
    evaluate.add_argument("--latents", default=None, metavar="FILE.npz",
                          help="also save the agent's episodic memories (latent maps)")
    evaluate.set_defaults(func=cmd_evaluate)

    validate = sub.add_parser("validate", help="check planned runs' hyperparameters (JSON on "
                              "stdin), as the workflow does before any job starts")
    validate.set_defaults(func=cmd_validate)

    plan = sub.add_parser("plan", help="expected hours of planned runs (JSON on stdin, as "
                          "`snakemake -n` writes them) from measured rates")
    plan.add_argument("--machine", default=None, metavar="KIND",
                      help="a machine kind of the rates table, e.g. h200-16core (default: "
                      "each kind's total)")
    plan.add_argument("--rates", default=None, metavar="FILE.csv",
                      help="the rates table (default: benchmarks/rates.csv of this checkout)")
    plan.set_defaults(func=cmd_plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except (UsageError, UserError) as error:
        print(f"trmrl: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"trmrl: error: {error}", file=sys.stderr)
        return 1
    except MemoryError:
        print("trmrl: error: out of memory; use smaller sizes (trials_per_update, horizon, "
              "model sizes) or a machine with more memory", file=sys.stderr)
        return 1
    except Terminated as error:  # SIGTERM: the exit status of a process it killed
        print(f"trmrl: {error}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("trmrl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `trmrl envs | head`
        sys.stderr.close()
        return 0
    except OSError as error:  # a full disk, a file system gone read-only: the run failed
        print(f"trmrl: error: {error}; a resumed run continues from its last checkpoint",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
