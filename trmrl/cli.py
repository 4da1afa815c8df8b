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
def cmd_envs(args) -> None:
    infos = [make_suite(name).info() for name in ENV_NAMES]
    if args.json:
        print(json.dumps(infos, indent=2))
        return
    header = f"{'env':<15} {'obs':>4} {'act':>4} {'horizon x K':>12}  {'splits':<15} base"
    print(header)
    print("-" * len(header))
    for info in infos:
        trial = f"{info['horizon']} x {info['episodes_per_trial']}"
        print(f"{info['name']:<15} {info['obs_dim']:>4} {info['act_dim']:>4} {trial:>12}  "
              f"{','.join(info['splits']):<15} {info['base']}")
    print()
    for info in infos:
        print(f"{info['name']}: {info['description']['task']}")
        for key in ("reward", "train", "test", "ood", "done"):
            if key in info["description"]:
                print(f"    {key:<7}{info['description'][key]}")
        print(f"    value  task_param = {info['task_param']}"
              + ("; success metric" if info["success_metric"] else ""))
        for quirk in info["quirks"]:
            print(f"    quirk  {quirk}")


def cmd_tasks(args) -> None:
    suite = make_suite(args.env)
    suite.check_split(args.split)
    tasks = suite.tasks(args.split, args.seed, args.n)
    if args.json:
        print(json.dumps([t.to_json() for t in tasks], indent=2))
        return
    sampled = args.split == "train" and suite.description.get("train", "").startswith("sampled")
    note = f" (first {len(tasks)} of seed {args.seed}'s stream: train tasks are drawn fresh per trial)" if sampled else ""
    print(f"# {suite.name} {args.split} tasks, seed {args.seed}{note}; value = {suite.task_param}")
    for task in tasks:
        print(f"{task.index:>4}  {task.value:>9.4f}  {task.label}")


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
    import dataclasses

    from trmrl import config as cfg
    from trmrl.agents import AGENT_NAMES, PLANNED, agent_class

    agents = []
    for name in AGENT_NAMES:
        cls = agent_class(name)
        data = cfg.load_defaults(name)
        fields = {f.name: f for f in dataclasses.fields(cls.config_class)}
        per_env = {env: cfg.to_dict(cfg.build(cls.config_class, cfg.env_defaults(name, env)[0]))
                   for env in ENV_NAMES}
        agents.append({"name": name, "defaults_version": data["version"],
                       "doc": (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().split("\n")[0],
                       "keys": sorted(fields), "defaults": per_env,
                       "presets": data.get("presets") or {}})
    if args.json:
        print(json.dumps({"agents": agents, "not_implemented": list(PLANNED)}, indent=2))
        return
    for agent in agents:
        print(f"{agent['name']} (defaults v{agent['defaults_version']}): {agent['doc']}")
        envs = [args.env] if args.env else ENV_NAMES
        base = agent["defaults"][envs[0]]
        print("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in base.items()) + f"   [{envs[0]}]")
        for env in envs[1:]:
            diff = {k: v for k, v in agent["defaults"][env].items() if base.get(k) != v}
            if diff:
                print(f"  {env}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in diff.items()))
        for preset, values in agent["presets"].items():
            print(f"  preset {preset} (--set preset={preset}): "
                  + ", ".join(f"{k}={_fmt(v)}" for k, v in values.items()))
        print()
    if PLANNED:
        print("not implemented yet: " + ", ".join(PLANNED))


def _fmt(value) -> str:
    if isinstance(value, float) and value and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.2g}"
    return str(value)


def cmd_train(args) -> None:
    import logging

    from trmrl import config as cfg
    from trmrl.train import resolve, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    spec = resolve(args.agent, args.env, args.seed, args.steps, args.device,
                   cfg.parse_overrides(args.set))
    train(spec, args.out)


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

    envs = sub.add_parser("envs", help="list the task suites")
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
    train.add_argument("--seed", required=True, type=_seed)
    train.add_argument("--out", required=True, metavar="RUN_DIR")
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
