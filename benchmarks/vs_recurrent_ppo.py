"""Our memory agents vs. sb3-contrib's RecurrentPPO: training env steps/s on the same trials.

Issue 8, benchmark 3. In one process and one run, trains sb3-contrib's RecurrentPPO (the
package a user would pick for recurrent PPO) and each of our memory agents on the same
cheetah-vel trials for the same number of env steps, on the CPU, with the same torch
threads, and prints env steps/s of each, where the time goes, and the ratio ours /
RecurrentPPO against the 10x target. Needs the `bench` extra (pip install -e ".[bench]").

    python benchmarks/vs_recurrent_ppo.py                    # trmrl and rl2, 32,000 steps each
    python benchmarks/vs_recurrent_ppo.py --agents rl2 --steps 16000

RecurrentPPO gets the same trial as our agents: one sb3 "episode" is one trial (K episodes
of the suite's horizon on one training task), its LSTM state is kept across the K episodes,
and it observes the same augmented input (s_t, a_{t-1}, r_{t-1}, d_t). Its PPO settings are
RL2's defaults (gamma, lambda, clip, lr, epochs, gradient clip, no advantage normalisation,
the same value-loss weight) so that both sides do the same work per env step.

Threads: torch gets trmrl.utils.available_cpus() threads for both sides (OMP_NUM_THREADS, the
SLURM allocation or the CPU affinity). On a 2-core machine that other jobs share, two OpenMP
threads can wait for each other for a whole scheduler slice at every parallel region, which
slows small per-step ops (acting, sb3's per-step LSTM loop) by up to 10-20x at random; the
CPU% and load averages printed per phase are there to spot it. OMP_NUM_THREADS=1 avoids it.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from functools import partial

import gymnasium as gym
import numpy as np
import torch

from trmrl.agents import AGENT_NAMES
from trmrl.envs import make_suite
from trmrl.sampling import TrialSampler, augment
from trmrl.train import build_agent, resolve
from trmrl.utils import available_cpus

MEMORY_AGENTS = ("trmrl", "rl2")  # the agents the 10x target is about, where registered
TARGET_RATIO = 10.0
N_ENVS = 8  # RecurrentPPO's envs, as in the reference measurement (~195 steps/s)


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as handle:
            return " ".join(handle.read().split()[:3])
    except OSError:
        return "n/a"


class CPUClock:
    """Wall time and this process's CPU time (all its threads), to show how much of the
    machine a phase actually got: other jobs on a shared 2-core box show up as CPU% < 100 x
    threads."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu / max(self.wall, 1e-9)


# ---------------------------------------------------------------------------------------
# RecurrentPPO's side: one gymnasium episode = one trial of our suite
# ---------------------------------------------------------------------------------------
class TrialEnv(gym.Env):
    """A whole trial of a suite as one gymnasium episode, with our agents' augmented input.

    Each reset draws a task from the train split and starts K episodes on it; between them
    the inner env is reset but the episode goes on, so a recurrent policy keeps its state
    across them (sb3 resets the LSTM only at episode starts). As in trmrl.sampling, an inner
    episode ends on termination or at the suite's horizon; at an inner boundary the previous
    action and reward are those of the episode's last step and d_t = 1; at the trial start
    all three are zero and d_t = 1. The trial's end is a truncation unless the last episode
    terminated (our PPO does not bootstrap there; sb3 does on truncation: one extra value
    call per trial, noise in the timing).
    """

    def __init__(self, env_name: str):
        self.suite = make_suite(env_name)
        self.env = self.suite.make_env()
        self.horizon, self.episodes_per_trial = self.suite.horizon, self.suite.episodes_per_trial
        inner_obs, self.action_space = self.suite.spaces()
        width = inner_obs.shape[0] + self.action_space.shape[0] + 2
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (width,), np.float32)
        self.rng = np.random.default_rng()

    def _observe(self, obs, prev_action, prev_reward, start: bool) -> np.ndarray:
        return augment(np.asarray(obs, np.float32), np.asarray(prev_action, np.float32),
                       np.float32(prev_reward), np.bool_(start))

    def _reset_inner(self) -> np.ndarray:
        return self.env.reset(seed=int(self.rng.integers(2**31)))[0]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.task = self.suite.sample_tasks(self.rng, 1)[0]
        self.env.set_task(self.task)
        self.episode, self.step_in_episode = 0, 0
        no_action = np.zeros(self.action_space.shape, np.float32)
        return self._observe(self._reset_inner(), no_action, 0.0, True), {}

    def step(self, action):
        action = np.asarray(action, np.float32)
        obs, reward, terminated, _, info = self.env.step(action)
        self.step_in_episode += 1
        if not (terminated or self.step_in_episode >= self.horizon):
            return self._observe(obs, action, reward, False), float(reward), False, False, info
        self.episode += 1
        self.step_in_episode = 0
        if self.episode >= self.episodes_per_trial:  # the trial is over
            return (self._observe(obs, action, reward, False), float(reward), bool(terminated),
                    not terminated, info)
        # next episode of the same trial: the agent sees the reset state with d_t = 1
        return self._observe(self._reset_inner(), action, reward, True), float(reward), False, False, info

    def close(self):
        self.env.close()


def rl2_ppo_settings(env_name: str) -> dict:
    """RL2's PPO defaults for ``env_name`` (the baseline RecurrentPPO stands in for)."""
    if "rl2" in AGENT_NAMES:
        hp = resolve("rl2", env_name, 0, device="cpu").hyperparameters
        return {"gamma": hp.gamma, "gae_lambda": hp.gae_lambda, "clip": hp.clip,
                "lr": hp.lr_policy, "epochs": hp.epochs, "minibatch_trials": hp.minibatch_size,
                "max_grad_norm": hp.max_grad_norm, "center_advantages": hp.center_advantages,
                "entropy_coef": hp.entropy_coef, "source": "rl2 defaults"}
    # rl2 not registered (yet): the values of trmrl/configs/rl2.yaml v1
    return {"gamma": 0.99, "gae_lambda": 0.95, "clip": 0.2, "lr": 3e-4, "epochs": 10,
            "minibatch_trials": 5, "max_grad_norm": 1.0, "center_advantages": False,
            "entropy_coef": 0.0, "source": "rl2.yaml v1 values (rl2 not registered)"}


class VecEnvTimer:
    """Wraps a VecEnv's step_async/step_wait to add up the seconds spent in the envs."""

    def __init__(self, venv):
        self.venv, self.seconds = venv, 0.0
        self._step_async, self._step_wait = venv.step_async, venv.step_wait
        venv.step_async, venv.step_wait = self.step_async, self.step_wait

    def step_async(self, actions):
        began = time.perf_counter()
        self._step_async(actions)
        self.seconds += time.perf_counter() - began

    def step_wait(self):
        began = time.perf_counter()
        out = self._step_wait()
        self.seconds += time.perf_counter() - began
        return out


def run_recurrent_ppo(args, ppo: dict) -> dict:
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    suite = make_suite(args.env)
    trial_len = suite.horizon * suite.episodes_per_trial
    vec_cls = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}[args.sb3_vec]
    venv = make_vec_env(partial(TrialEnv, args.env), n_envs=N_ENVS, seed=0, vec_env_cls=vec_cls)
    env_timer = VecEnvTimer(venv)

    # sb3 cuts each minibatch from the rollout at a random offset, so its minibatches never
    # are whole trials; a multiple of the trial length, RL2's trials per minibatch, is the
    # closest (3,200-step rollouts -> minibatches of 2,000 and 1,200 steps: 2 per epoch)
    batch_size = args.sb3_batch_size or ppo["minibatch_trials"] * trial_len

    class TimedRecurrentPPO(RecurrentPPO):
        """RecurrentPPO that adds up the seconds of rollouts and of updates."""

        rollout_s = train_s = 0.0
        updates = 0

        def collect_rollouts(self, *a, **kw):
            began = time.perf_counter()
            try:
                return super().collect_rollouts(*a, **kw)
            finally:
                self.rollout_s += time.perf_counter() - began

        def train(self):
            began = time.perf_counter()
            super().train()
            self.train_s += time.perf_counter() - began
            self.updates += 1

    model = TimedRecurrentPPO(
        "MlpLstmPolicy", venv, device=args.device, seed=0, verbose=0,
        n_steps=trial_len,  # one trial per env per rollout: trials start with rollouts
        batch_size=batch_size, n_epochs=ppo["epochs"],
        gamma=ppo["gamma"], gae_lambda=ppo["gae_lambda"], clip_range=ppo["clip"],
        learning_rate=ppo["lr"], max_grad_norm=ppo["max_grad_norm"],
        normalize_advantage=ppo["center_advantages"], ent_coef=ppo["entropy_coef"],
        # our PPO adds 0.5 * MSE of the value; sb3 adds vf_coef * MSE
        vf_coef=0.5,
        # no target_kl: RecurrentPPO runs every epoch, which is what the target compares at;
        # our agents print how many minibatch steps their updates took
        target_kl=None,
        policy_kwargs={"lstm_hidden_size": args.sb3_lstm_size},
    )
    print(f"\nRecurrentPPO (sb3-contrib): MlpLstmPolicy, LSTM {args.sb3_lstm_size} (policy and "
          f"critic each), {N_ENVS} envs ({vec_cls.__name__}), n_steps {trial_len}, "
          f"batch_size {batch_size}, n_epochs {ppo['epochs']}, gamma {ppo['gamma']}, "
          f"lambda {ppo['gae_lambda']}, clip {ppo['clip']}, lr {ppo['lr']}, "
          f"max_grad_norm {ppo['max_grad_norm']} ({ppo['source']})")
    load_before = loadavg()
    with CPUClock() as clock:
        model.learn(total_timesteps=args.steps)
    steps = model.num_timesteps
    rollout, env_s, train = model.rollout_s, env_timer.seconds, model.train_s
    returns = [info["r"] for info in model.ep_info_buffer]
    venv.close()
    # per epoch: one gradient step per minibatch of the rollout
    minibatches = math.ceil(N_ENVS * trial_len / batch_size) * ppo["epochs"]
    print(f"  {steps:,} env steps in {clock.wall:.1f} s -> {steps / clock.wall:,.0f} env steps/s "
          f"({model.updates} updates of {minibatches} minibatch steps each)")
    print(f"  rollouts {100 * rollout / clock.wall:.0f}% ({steps / rollout:,.0f} steps/s; envs "
          f"{100 * env_s / clock.wall:.0f}%, policy and buffer {100 * (rollout - env_s) / clock.wall:.0f}%), "
          f"updates {100 * train / clock.wall:.0f}% ({train / max(model.updates, 1):.1f} s each)")
    print(f"  CPU {clock.cpu_percent:.0f}% of one core on average; load average before {load_before}, "
          f"after {loadavg()}")
    if returns:
        print(f"  mean trial return of the last {len(returns)} trials: {np.mean(returns):.1f}")
    return {"steps": steps, "seconds": clock.wall}


# ---------------------------------------------------------------------------------------
# Our side: the sampler and agent.update, as `trmrl train` runs them
# ---------------------------------------------------------------------------------------
def run_ours(name: str, args) -> dict:
    spec = resolve(name, args.env, 0, device=args.device)
    hp = spec.hyperparameters
    agent = build_agent(spec)
    sampler = TrialSampler(agent.suite, hp.trials_per_update, horizon=hp.horizon,
                           episodes_per_trial=hp.episodes_per_trial, num_workers=spec.settings.num_workers)
    rng = np.random.default_rng(0)
    print(f"\n{name}: default config (defaults v{spec.defaults_version}), {hp.trials_per_update} trials/update, epochs {hp.epochs}, "
          f"minibatch_size {hp.minibatch_size} ({'trials' if agent.trial_minibatches else 'steps'}), "
          f"gamma {hp.gamma}, lambda {hp.gae_lambda}, clip {hp.clip}, target_kl {hp.target_kl}, "
          f"sampler workers {spec.settings.num_workers}")
    load_before = loadavg()
    steps = sample_s = update_s = 0.0
    iteration = 0
    stopped_early = []  # iterations whose update target_kl ended before its last minibatch
    with CPUClock() as clock:
        while steps < args.steps:
            tasks = agent.suite.sample_tasks(rng, hp.trials_per_update)
            began = time.perf_counter()
            agent.model.eval()  # as PPOAgent.train_iteration does
            batch = sampler.run(agent, tasks)
            agent.model.train()
            sampled = time.perf_counter()
            metrics = agent.update(batch)
            updated = time.perf_counter()
            # the most minibatch steps this batch allows: epochs x minibatches of its samples
            samples = batch.num_trials if agent.trial_minibatches else batch.env_steps
            full = hp.epochs * math.ceil(samples / hp.minibatch_size)
            if metrics["minibatch_steps"] < full:
                stopped_early.append(iteration + 1)
            iteration += 1
            steps += batch.env_steps
            sample_s += sampled - began
            update_s += updated - sampled
            print(f"  iteration {iteration}: {batch.env_steps:,} steps, sampling {sampled - began:.2f} s, "
                  f"update {updated - sampled:.2f} s, minibatch_steps {metrics['minibatch_steps']}/{full}, "
                  f"approx_kl {metrics['approx_kl']:.4f}, "
                  f"mean trial return {batch.episode_return.sum(1).mean():.1f}")
    env_s, policy_s = sampler.timings["envs"], sampler.timings["policy"]
    sampler.close()
    total = sample_s + update_s
    print(f"  {steps:,.0f} env steps in {total:.1f} s -> {steps / total:,.0f} env steps/s")
    print(f"  sampling {100 * sample_s / total:.0f}% ({steps / sample_s:,.0f} steps/s; envs "
          f"{100 * env_s / total:.0f}%, acting {100 * policy_s / total:.0f}%), "
          f"update {100 * update_s / total:.0f}% ({update_s / iteration:.2f} s each)")
    print(f"  CPU {clock.cpu_percent:.0f}% of one core on average; load average before {load_before}, "
          f"after {loadavg()}")
    return {"steps": steps, "seconds": total, "stopped_early": stopped_early,
            "target_kl": hp.target_kl, "epochs": hp.epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="cheetah-vel")
    parser.add_argument("--steps", type=int, default=32_000,
                        help="env steps per agent (default: 4 of our 8,000-step iterations, "
                             "10 of RecurrentPPO's 3,200-step rollouts); each side rounds up "
                             "to whole iterations")
    default_agents = [a for a in MEMORY_AGENTS if a in AGENT_NAMES]
    parser.add_argument("--agents", nargs="+", default=default_agents, choices=AGENT_NAMES,
                        help=f"our agents to train (default: {' '.join(default_agents)})")
    parser.add_argument("--device", default="cpu", choices=["cpu"],
                        help="the comparison is about the 2-core CPU")
    parser.add_argument("--sb3-vec", default="dummy", choices=["dummy", "subproc"],
                        help="RecurrentPPO's VecEnv (dummy: faster than subproc on 2 cores, whose 8 "
                             "worker processes cost more in pipes than they save in physics)")
    parser.add_argument("--sb3-batch-size", type=int, default=0,
                        help="RecurrentPPO's minibatch in steps (default: RL2's trials per "
                             "minibatch x trial length)")
    parser.add_argument("--sb3-lstm-size", type=int, default=256,
                        help="RecurrentPPO's LSTM units (default: sb3-contrib's own)")
    args = parser.parse_args()

    try:
        import sb3_contrib
    except ImportError:
        parser.error("sb3-contrib is not installed: pip install -e '.[bench]'")

    # the same thread pool for both sides, sized to this job's allocation
    threads = available_cpus()
    torch.set_num_threads(threads)
    print(f"{args.env}, {args.steps:,} env steps per agent, device {args.device}, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads "
          f"(available_cpus {threads}, os.cpu_count {os.cpu_count()}), "
          f"sb3-contrib {sb3_contrib.__version__}; load average at start {loadavg()}")

    baseline = run_recurrent_ppo(args, rl2_ppo_settings(args.env))
    base_rate = baseline["steps"] / baseline["seconds"]
    results = {name: run_ours(name, args) for name in args.agents}
    if torch.get_num_threads() != threads:  # nothing should have changed it; say so if it did
        print(f"warning: torch threads changed to {torch.get_num_threads()} during the run")

    print(f"\nSummary ({torch.get_num_threads()} torch threads, load average at end {loadavg()}):")
    print(f"  {'agent':<14}{'env steps':>11}{'seconds':>9}{'steps/s':>9}{'vs RecurrentPPO':>17}  target >= {TARGET_RATIO:.0f}x")
    print(f"  {'RecurrentPPO':<14}{baseline['steps']:>11,.0f}{baseline['seconds']:>9.1f}{base_rate:>9,.0f}{'1.0x':>17}")
    for name, result in results.items():
        rate = result["steps"] / result["seconds"]
        ratio = rate / base_rate
        verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
        print(f"  {name:<14}{result['steps']:>11,.0f}{result['seconds']:>9.1f}{rate:>9,.0f}"
              f"{ratio:>16.1f}x  {verdict}")
    for name, result in results.items():
        if result["target_kl"] <= 0:
            continue
        # the KL early stop makes long runs cheaper per iteration than the first ones: say
        # which regime this run measured, from the minibatch_steps printed above
        seen = (f"here it stopped early in iterations {result['stopped_early']}, so those "
                "updates took fewer epochs than RecurrentPPO's" if result["stopped_early"] else
                f"here every update took all its minibatch steps ({result['epochs']} full epochs, "
                "as RecurrentPPO's)")
        longer = (" in long runs that cuts TrMRL's update ~10x after the first 1M steps "
                  "(results/reference metrics.csv), but the first iterations take all of them;"
                  if name == "trmrl" else "")
        print(f"  note: {name}'s defaults end an iteration's updates once a minibatch step's KL "
              f"exceeds 1.5 x target_kl = {1.5 * result['target_kl']:g} (trmrl/ppo.py);{longer} "
              f"{seen}.")


if __name__ == "__main__":
    main()
