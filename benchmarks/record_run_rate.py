"""Record a finished run's whole-run rate in the cost plan's rates table (benchmarks/rates.csv).

The rate is env_steps / wall_s of the run's last metrics.csv row: wall_s adds up the time of
every segment of a resumed run (not the pauses between them) and includes compiling,
evaluations and checkpoints. The run directory does not know the machine it ran on: name its
kind, and say in --note whether other runs shared the machine. Example:

    python benchmarks/record_run_rate.py results/paper/runs/cheetah-vel/rl2/seed0 \\
        --machine h100-16core --note "alone on the machine"
"""

from __future__ import annotations

import argparse
import csv
import datetime
import shlex
import sys
from pathlib import Path

import yaml

from trmrl import plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--machine", required=True, metavar="KIND",
                        help="the machine kind it ran on, e.g. h200-16core")
    parser.add_argument("--device-name", default=None,
                        help="e.g. 'NVIDIA H200' or '2 CPU threads' (default: the run's device)")
    parser.add_argument("--command", default=None,
                        help="the `trmrl train` command of the run (default: rebuilt from its "
                        "config.yaml, without the --set values it does not record)")
    parser.add_argument("--date", default=datetime.date.today().isoformat(),
                        help="when it ran, YYYY-MM-DD (default: today)")
    parser.add_argument("--note", default="", help="conditions: alone or beside other runs")
    parser.add_argument("--rates", default=str(plan.DEFAULT_RATES), metavar="FILE.csv")
    args = parser.parse_args()
    if not plan.MACHINE_PATTERN.fullmatch(args.machine):
        parser.error(f"--machine {args.machine!r}: a machine kind is lowercase letters, digits, "
                     "'.', '+' and '-', e.g. h200-16core")

    run_dir = Path(args.run_dir)
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        with (run_dir / "metrics.csv").open() as file:
            rows = list(csv.DictReader(file))
    except OSError as error:
        sys.exit(f"record_run_rate.py: error: {error}")
    if not rows:
        sys.exit(f"record_run_rate.py: error: {run_dir / 'metrics.csv'} has no iterations yet")
    env_steps, wall_s = int(rows[-1]["env_steps"]), float(rows[-1]["wall_s"])
    device = str(config["device"])
    command = args.command or shlex.join([
        "trmrl", "train", "--agent", config["agent"], "--env", config["env"], "--seed",
        str(config["seed"]), "--steps", str(config["hyperparameters"]["steps"]), "--device", device])
    note = f"{run_dir}: {env_steps:,} env steps in {wall_s:,.1f} s" + (
        f"; {args.note}" if args.note else "")
    rate = plan.Rate(machine=args.machine, agent=config["agent"], env=config["env"],
                     defaults_version=int(config["defaults_version"]),
                     device=f"{device} ({args.device_name})" if args.device_name else device,
                     env_steps_per_s=env_steps / wall_s, measured="whole run", command=command,
                     date=args.date, note=note)
    try:
        plan.append_rate(args.rates, rate)
    except plan.UserError as error:
        sys.exit(f"record_run_rate.py: error: {error}")
    print(f"{rate.agent} on {rate.env} (defaults v{rate.defaults_version}): "
          f"{rate.env_steps_per_s:,.0f} env steps/s over the whole run -> {args.rates} "
          f"({args.machine})")


if __name__ == "__main__":
    main()
