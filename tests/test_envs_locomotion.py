"""MuJoCo locomotion suites: rewards and terminations recomputed from the raw MuJoCo state,
determinism, splits, task switching of the *-params suites, and full trials."""

import copy
import math
import pickle

import gymnasium as gym
import mujoco
import numpy as np
import pytest

from trmrl.envs import SuiteError, Task, make_suite
from trmrl.envs.base import split_rng

LOCOMOTION = ("cheetah-vel", "cheetah-dir", "ant-dir", "ant-goal", "humanoid-dir",
              "walker-params", "hopper-params")
WITH_OOD = ("cheetah-vel", "ant-dir", "ant-goal", "walker-params", "hopper-params")
WITHOUT_OOD = ("cheetah-dir", "humanoid-dir")
PARAMS = ("walker-params", "hopper-params")
# held-out splits drawn from a continuous distribution (so never equal to a train draw)
CONTINUOUS_SPLITS = [("cheetah-vel", "test"), ("cheetah-vel", "ood"), ("ant-dir", "ood"),
                     ("ant-goal", "test"), ("ant-goal", "ood"), ("humanoid-dir", "test"),
                     ("walker-params", "test"), ("walker-params", "ood"),
                     ("hopper-params", "test"), ("hopper-params", "ood")]

OBS_DIM = {"cheetah-vel": 20, "cheetah-dir": 20, "ant-dir": 27, "ant-goal": 29,
           "humanoid-dir": 348, "walker-params": 17, "hopper-params": 11}
ACT_DIM = {"cheetah-vel": 6, "cheetah-dir": 6, "ant-dir": 8, "ant-goal": 8,
           "humanoid-dir": 17, "walker-params": 6, "hopper-params": 3}
FRAME_SKIP = {"cheetah-vel": 5, "cheetah-dir": 5, "ant-dir": 5, "ant-goal": 5,
              "humanoid-dir": 5, "walker-params": 4, "hopper-params": 4}


@pytest.fixture(scope="module", params=LOCOMOTION)
def suite(request):
    return make_suite(request.param)


def ready_env(suite, task=None, seed=0):
    env = suite.make_env(task or suite.tasks("test", 0)[0])
    env.reset(seed=seed)
    return env


def random_actions(env, n, seed=0, overshoot=1.5):
    """Actions partly outside the control range, so clipping is exercised too."""
    rng = np.random.default_rng(seed)
    high = env.model.actuator_ctrlrange[:, 1]
    return [rng.uniform(-overshoot * high, overshoot * high) for _ in range(n)]


# ---------------------------------------------------------------------------------------
# Rewards and terminations, recomputed here from the MuJoCo state
# ---------------------------------------------------------------------------------------
def mass_centre_xy(model, data):
    return (np.sum(model.body_mass[:, None] * data.xipos, axis=0) / np.sum(model.body_mass))[:2]


def snapshot(env):
    return {"qpos": env.data.qpos.copy(), "mass_centre": mass_centre_xy(env.model, env.data)}


def expected_outcome(name, env, before, action):
    """(reward, terminated, reward terms) of the step just taken, from the spec's definitions."""
    model, data, params = env.model, env.data, env.task.params
    a = np.clip(action, model.actuator_ctrlrange[:, 0], model.actuator_ctrlrange[:, 1])
    a2 = float(np.sum(a ** 2))
    dt = model.opt.timestep * FRAME_SKIP[name]
    qpos, qvel = data.qpos, data.qvel
    torso_xy_velocity = (qpos[:2] - before["qpos"][:2]) / dt
    x_velocity = (qpos[0] - before["qpos"][0]) / dt
    ant_contact = 0.5e-3 * np.sum(np.clip(data.cfrc_ext, -1, 1) ** 2)

    if name == "cheetah-vel":
        velocity_cost = abs(x_velocity - params["velocity"])
        return -velocity_cost - 0.05 * a2, False, {
            "forward_velocity": x_velocity, "velocity_cost": velocity_cost, "ctrl_cost": 0.05 * a2}
    if name == "cheetah-dir":
        forward_reward = params["direction"] * x_velocity
        return forward_reward - 0.05 * a2, False, {
            "forward_velocity": x_velocity, "forward_reward": forward_reward, "ctrl_cost": 0.05 * a2}
    if name == "ant-dir":
        g = params["angle"]
        forward = torso_xy_velocity @ np.array([np.cos(g), np.sin(g)])
        state = np.concatenate([qpos, qvel])
        healthy = np.isfinite(state).all() and 0.2 <= qpos[2] <= 1.0
        return forward - 0.5 * a2 - ant_contact + 1.0, not healthy, {
            "forward_velocity": forward, "ctrl_cost": 0.5 * a2, "contact_cost": ant_contact,
            "survive_reward": 1.0}
    if name == "ant-goal":
        distance = np.abs(qpos[:2] - np.array(params["goal"])).sum()
        return -distance - 0.1 * a2 - ant_contact, False, {
            "goal_distance": distance, "ctrl_cost": 0.1 * a2, "contact_cost": ant_contact}
    if name == "humanoid-dir":
        t = params["angle"]
        velocity = (mass_centre_xy(model, data) - before["mass_centre"]) / dt
        forward = velocity @ np.array([np.cos(t), np.sin(t)])
        contact = min(0.5e-6 * np.sum(data.cfrc_ext ** 2), 10.0)
        return 1.25 * forward + 5.0 - 0.1 * a2 - contact, not 1.0 < qpos[2] < 2.0, {
            "forward_velocity": forward, "forward_reward": 1.25 * forward, "alive_bonus": 5.0,
            "ctrl_cost": 0.1 * a2, "contact_cost": contact}
    terms = {"forward_velocity": x_velocity, "alive_bonus": 1.0, "ctrl_cost": 1e-3 * a2}
    if name == "walker-params":
        height, angle = qpos[1], qpos[2]
        return x_velocity + 1.0 - 1e-3 * a2, not (0.8 < height < 2.0 and -1 < angle < 1), terms
    if name == "hopper-params":
        state = np.concatenate([qpos, qvel])
        healthy = (np.isfinite(state).all() and (np.abs(state[2:]) < 100).all()
                   and qpos[1] > 0.7 and abs(qpos[2]) < 0.2)
        return x_velocity + 1.0 - 1e-3 * a2, not healthy, terms
    raise AssertionError(name)


# The definitions above reach the suites' numbers through other operations (np.sum for a BLAS
# dot, np.cos for math.cos, a broadcast sum for a matmul), so they agree to rounding, a few
# ulp of each term: far below 1e-9 for rewards of order 1-100, far above it for any slip in a
# formula (a wrong coefficient, sign, task parameter or row).
ROUNDING = {"rel": 1e-9, "abs": 1e-9}
HELD_OUT = [(name, split) for name in LOCOMOTION for split in ("test", "ood")
            if split == "test" or name in WITH_OOD]


@pytest.mark.parametrize("name, split", HELD_OUT)
def test_reward_and_termination_match_the_definitions(name, split):
    suite = make_suite(name)
    for task in suite.tasks(split, 0, 2):
        env = ready_env(suite, task, seed=task.index)
        for action in random_actions(env, 8, seed=task.index):
            before = snapshot(env)
            _, reward, terminated, truncated, info = env.step(action)
            want_reward, want_terminated, want_terms = expected_outcome(suite.name, env, before, action)
            assert reward == pytest.approx(want_reward, **ROUNDING)
            assert terminated == want_terminated and truncated is False
            assert info.pop("task_value") == task.value
            assert info == pytest.approx(want_terms, **ROUNDING)
            assert all(type(value) is float for value in info.values())
            if terminated:
                env.reset()


@pytest.mark.parametrize("name", LOCOMOTION)
def test_batched_rewards_match_the_definitions_row_by_row(name):
    # the sampler's path: one reward_batch over envs of different tasks and splits
    suite = make_suite(name)
    tasks = (suite.tasks("test", 0, 2) + suite.tasks("train", 0, 2)
             + suite.tasks(suite.splits[-1], 1, 2))
    envs = [ready_env(suite, task, seed=i) for i, task in enumerate(tasks)]
    rng = np.random.default_rng(2)
    high = envs[0].model.actuator_ctrlrange[:, 1]
    terminations = 0
    for _ in range(12):
        actions = rng.uniform(-1.5 * high, 1.5 * high, (len(envs), high.size))
        before = [snapshot(env) for env in envs]
        obs, rewards = suite.step_with_rewards(envs, actions)
        assert rewards.reward.shape == rewards.terminated.shape == (len(envs),)
        for i, env in enumerate(envs):
            want_reward, want_terminated, want_terms = expected_outcome(name, env, before[i], actions[i])
            assert rewards.reward[i] == pytest.approx(want_reward, **ROUNDING)
            assert rewards.terminated[i] == want_terminated
            terms = {key: value[i] if isinstance(value, np.ndarray) else value
                     for key, value in rewards.components.items()}
            assert terms == pytest.approx(want_terms, **ROUNDING)
            np.testing.assert_array_equal(obs[i], suite.observe(env))
            if want_terminated:
                env.reset(seed=100 + terminations)
                terminations += 1


@pytest.mark.parametrize("name", ["ant-dir", "ant-goal", "humanoid-dir"])
def test_contact_forces_are_computed(name):
    # cfrc_ext is only filled by mj_rnePostConstraint; a body resting on the floor has some
    env = ready_env(make_suite(name))
    for _ in range(10):
        env.step(np.zeros(env.action_space.shape))
    assert np.abs(env.data.cfrc_ext).sum() > 0


@pytest.mark.parametrize("name, qpos_index, value, terminated", [
    ("ant-dir", 2, 2.0, True),  # torso z above 1.0
    ("ant-goal", 2, 2.0, False),  # ant-goal never terminates
    ("humanoid-dir", 2, 3.0, True),  # torso z above 2.0
    ("humanoid-dir", 2, 0.5, True),  # torso z below 1.0
    ("walker-params", 2, 1.5, True),  # torso angle beyond 1 rad
    ("walker-params", 1, 0.5, True),  # too low
    ("hopper-params", 2, 0.5, True),  # torso angle beyond 0.2 rad
    ("cheetah-vel", 2, 3.0, False),  # the cheetah never terminates, even upside down
])
def test_termination_rule(name, qpos_index, value, terminated):
    suite = make_suite(name)
    env = ready_env(suite)
    env.data.qpos[qpos_index] = value
    before = snapshot(env)
    action = np.zeros(env.action_space.shape)
    _, reward, done, _, _ = env.step(action)
    assert done is terminated
    want_reward, want_terminated, _ = expected_outcome(name, env, before, action)
    assert done == want_terminated and reward == pytest.approx(want_reward, rel=1e-9)


def test_actions_are_clipped_before_physics(suite):
    env_a, env_b = ready_env(suite, seed=3), ready_env(suite, seed=3)
    high = env_a.model.actuator_ctrlrange[:, 1]
    obs_a, reward_a, *_ = env_a.step(10 * high)
    obs_b, reward_b, *_ = env_b.step(high)
    np.testing.assert_array_equal(obs_a, obs_b)
    assert reward_a == reward_b


def test_ant_free_joint_is_torso_position():
    # ant velocities use qpos[:2]; it is the torso's position (xpos) once kinematics are current
    env = ready_env(make_suite("ant-dir"))
    for _ in range(5):
        env.step(env.action_space.sample())
    mujoco.mj_kinematics(env.model, env.data)
    np.testing.assert_allclose(env.data.body("torso").xpos, env.data.qpos[:3], atol=1e-12)


def test_cheetah_observation_layout():
    env = ready_env(make_suite("cheetah-vel"))
    obs, *_ = env.step(env.action_space.sample())
    data = env.data
    np.testing.assert_array_equal(
        obs, np.concatenate([data.qpos[1:], data.qvel, data.body("torso").xpos]))


@pytest.mark.parametrize("name, gym_id", [("humanoid-dir", "Humanoid-v5"),
                                          ("walker-params", "Walker2d-v5"),
                                          ("hopper-params", "Hopper-v5")])
def test_observation_matches_gymnasium_v5(name, gym_id):
    env = ready_env(make_suite(name))
    for action in random_actions(env, 3):
        env.step(action)
    reference = gym.make(gym_id).unwrapped
    reference.reset(seed=0)
    # same state (and, for *-params, the task's rescaled model) in gymnasium's env
    reference.model, reference.data = env.model, copy.deepcopy(env.data)
    np.testing.assert_array_equal(env.suite.observe(env), reference._get_obs())
    reference.close()


# ---------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------
def task_dump(tasks):
    return [t.to_json() for t in tasks]


def test_tasks_are_identical_for_the_same_seed(suite):
    for split in suite.splits:
        assert task_dump(suite.tasks(split, 5)) == task_dump(suite.tasks(split, 5))
        assert task_dump(suite.tasks(split, 5)) == task_dump(make_suite(suite.name).tasks(split, 5))


@pytest.mark.parametrize("name, split", CONTINUOUS_SPLITS + [("cheetah-dir", "train"),
                                                             ("ant-dir", "train")])
def test_tasks_differ_between_seeds(name, split):
    suite = make_suite(name)
    assert [t.value for t in suite.tasks(split, 0)] != [t.value for t in suite.tasks(split, 1)]


def test_train_tasks_are_the_seeds_stream(suite):
    first_twelve = suite.tasks("train", 3, 12)
    assert task_dump(suite.tasks("train", 3, 5)) == task_dump(first_twelve[:5])
    assert task_dump(suite.sample_tasks(split_rng(3, "train"), 12, 3)) == task_dump(first_twelve)
    assert len(suite.tasks("train", 3)) == 20
    assert [t.index for t in first_twelve] == list(range(12))


def rollout(suite, task, reset_seed, actions):
    env = suite.make_env(task)
    observations = [env.reset(seed=reset_seed)[0]]
    for action in actions:
        obs, _, terminated, _, _ = env.step(action)
        observations.append(obs)
        if terminated:
            observations.append(env.reset()[0])
    return np.array(observations)


def test_observation_sequences_are_deterministic(suite):
    task = suite.tasks("test", 0)[1]
    actions = random_actions(suite.make_env(task), 30, overshoot=1.0)
    first = rollout(suite, task, 7, actions)
    np.testing.assert_array_equal(first, rollout(suite, task, 7, actions))
    assert not np.array_equal(first[0], rollout(suite, task, 8, actions)[0])


# ---------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------
def test_held_out_splits_are_twenty_fixed_tasks(suite):
    for split in suite.splits[1:]:
        tasks = suite.tasks(split, 0)
        assert len(tasks) == 20 and [t.index for t in tasks] == list(range(20))
        assert all(t.split == split and t.env == suite.name for t in tasks)
        assert task_dump(suite.tasks(split, 0, 4)) == task_dump(tasks[:4])
        assert task_dump(suite.eval_tasks(split, 0)) == task_dump(tasks)


@pytest.mark.parametrize("name, split", CONTINUOUS_SPLITS)
def test_held_out_tasks_are_not_train_draws(name, split):
    suite = make_suite(name)
    train_values = {t.value for t in suite.tasks("train", 0, 200)}
    assert not train_values & {t.value for t in suite.tasks(split, 0)}


def test_cheetah_velocity_ranges():
    suite = make_suite("cheetah-vel")
    for split, (low, high) in [("train", (0, 3)), ("test", (0, 3)), ("ood", (3, 4))]:
        velocities = np.array([t.params["velocity"] for t in suite.tasks(split, 0, 100)])
        assert ((low <= velocities) & (velocities <= high)).all()
        assert velocities.tolist() == [t.value for t in suite.tasks(split, 0, 100)]


def test_ant_goal_radii():
    suite = make_suite("ant-goal")
    for split, (low, high) in [("train", (0, 3)), ("test", (0, 3)), ("ood", (3, 4))]:
        tasks = suite.tasks(split, 0, 200)
        goals = np.array([t.params["goal"] for t in tasks])
        radii = np.linalg.norm(goals, axis=1)
        assert ((low <= radii) & (radii <= high)).all()
        np.testing.assert_allclose([t.value for t in tasks], np.arctan2(goals[:, 1], goals[:, 0]))


@pytest.mark.parametrize("split, low, high", [("train", 0, 3), ("ood", 3, 4)])
def test_ant_goals_uniform_in_area(split, low, high):
    # uniform in area <=> squared radius uniform on [low^2, high^2]
    suite = make_suite("ant-goal")
    goals = np.array([t.params["goal"] for seed in range(100) for t in suite.tasks(split, seed)])
    squared_radii = np.sum(goals ** 2, axis=1)
    middle = (low ** 2 + high ** 2) / 2
    assert np.mean(squared_radii < middle) == pytest.approx(0.5, abs=0.04)


@pytest.mark.parametrize("name", ["cheetah-dir", "ant-dir"])
def test_two_direction_splits(name):
    suite = make_suite(name)
    test_values = [t.value for t in suite.tasks("test", 0)]
    assert test_values == [-1.0, 1.0] * 10
    assert test_values == [t.value for t in suite.tasks("test", 1)]
    train_values = [t.value for t in suite.tasks("train", 0, 100)]
    assert set(train_values) == {-1.0, 1.0}


@pytest.mark.parametrize("name, split", [("ant-dir", "ood"), ("humanoid-dir", "train"),
                                         ("humanoid-dir", "test")])
def test_direction_angles_in_full_circle(name, split):
    angles = np.array([t.value for t in make_suite(name).tasks(split, 0, 100)])
    assert ((0 <= angles) & (angles < 2 * math.pi)).all()
    assert angles.min() < 1 and angles.max() > 2 * math.pi - 1


@pytest.mark.parametrize("name", PARAMS)
def test_param_exponent_ranges(name):
    suite = make_suite(name)
    for split in ("train", "test", "ood"):
        for task in suite.tasks(split, 0, 5):
            exponents = np.concatenate([np.ravel(task.params[f"{key}_exp"]) for key in
                                        ("body_mass", "body_inertia", "dof_damping",
                                         "geom_friction")])
            assert task.value == pytest.approx(exponents.mean())
            if split == "ood":
                assert ((3 <= np.abs(exponents)) & (np.abs(exponents) <= 4)).all()
                assert (exponents > 0).any() and (exponents < 0).any()
            else:
                assert (np.abs(exponents) <= 3).all()


@pytest.mark.parametrize("name", WITHOUT_OOD)
def test_no_ood_split(name):
    with pytest.raises(SuiteError, match="splits are: train, test"):
        make_suite(name).tasks("ood", 0)


@pytest.mark.parametrize("call, message", [
    (lambda s: s.tasks("valid", 0), "no split 'valid'; its splits are: train, test"),
    (lambda s: s.tasks("test", 0, 0), "positive integer, got 0"),
    (lambda s: s.tasks("train", 0, -3), "positive integer, got -3"),
    (lambda s: s.tasks("test", "1"), "seed must be an integer, got '1'"),
    (lambda s: s.tasks("train", 1.5), "seed must be an integer, got 1.5"),
    (lambda s: s.sample_tasks(np.random.default_rng(0), 0), "positive integer, got 0"),
])
def test_bad_input_raises_suite_error(suite, call, message):
    with pytest.raises(SuiteError, match=message):
        call(suite)


def test_env_usage_errors(suite):
    env = suite.make_env()
    with pytest.raises(RuntimeError, match="set_task"):
        env.step(np.zeros(env.action_space.shape))
    env.set_task(suite.tasks("test", 0)[0])
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(env.action_space.shape))
    env.reset(seed=0)
    env.step(np.zeros(env.action_space.shape))
    env.set_task(suite.tasks("test", 0)[1])  # a new task needs a new reset
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(env.action_space.shape))
    other = "ant-goal" if suite.name != "ant-goal" else "cheetah-vel"
    with pytest.raises(SuiteError, match=other):
        env.set_task(make_suite(other).tasks("test", 0)[0])
    with pytest.raises(ValueError, match="action must have"):
        env.reset(seed=0)
        env.step(np.zeros(env.action_space.shape[0] + 1))


# ---------------------------------------------------------------------------------------
# *-params: set_task rescales the model in place
# ---------------------------------------------------------------------------------------
MULTIPLIER_BASE = {"body_mass": 1.5, "body_inertia": 1.5, "geom_friction": 1.5,
                   "dof_damping": 1.3}


def zero_exponent_task(suite):
    shapes = {key: getattr(suite.make_env().model, key).shape for key in MULTIPLIER_BASE}
    params = {f"{key}_exp": np.zeros(shape).tolist() for key, shape in shapes.items()}
    return Task(suite.name, "test", 0, params, "base model", 0.0)


@pytest.mark.parametrize("name", PARAMS)
def test_set_task_rescales_from_base_and_restores_exactly(name):
    suite = make_suite(name)
    env = suite.make_env()
    base = {key: getattr(env.model, key).copy() for key in MULTIPLIER_BASE}
    base_invweight = env.model.dof_invweight0.copy()
    task_a, task_b = suite.tasks("test", 0, 2)

    env.set_task(task_a)
    for key, multiplier_base in MULTIPLIER_BASE.items():
        exponents = np.array(task_a.params[f"{key}_exp"])
        np.testing.assert_allclose(getattr(env.model, key),
                                   base[key] * multiplier_base ** exponents, rtol=1e-14)
    after_a = {key: getattr(env.model, key).copy() for key in MULTIPLIER_BASE}

    env.set_task(task_b)
    assert not np.array_equal(env.model.body_mass, after_a["body_mass"])
    env.set_task(task_a)
    for key in MULTIPLIER_BASE:
        np.testing.assert_array_equal(getattr(env.model, key), after_a[key])

    env.set_task(zero_exponent_task(suite))
    for key in MULTIPLIER_BASE:
        np.testing.assert_array_equal(getattr(env.model, key), base[key])
    np.testing.assert_array_equal(env.model.dof_invweight0, base_invweight)


@pytest.mark.parametrize("name", PARAMS)
def test_params_change_dynamics_per_env(name):
    suite = make_suite(name)
    task_a, task_b = suite.tasks("test", 0, 2)
    actions = random_actions(suite.make_env(), 20, overshoot=1.0)
    run_a = rollout(suite, task_a, 0, actions)
    assert not np.array_equal(run_a, rollout(suite, task_b, 0, actions))

    # envs own their model: another env's set_task leaves this one (and the base) alone
    env = suite.make_env(task_a)
    mass_a = env.model.body_mass.copy()
    suite.make_env(task_b)
    np.testing.assert_array_equal(env.model.body_mass, mass_a)
    env.set_task(task_b)
    env.set_task(task_a)
    env.reset(seed=0)
    replay = [env.step(a)[0] for a in actions[:5]]
    np.testing.assert_array_equal(np.array(replay), run_a[1:6])


# ---------------------------------------------------------------------------------------
# Whole trials, spaces, metadata
# ---------------------------------------------------------------------------------------
def test_one_full_trial_of_random_steps(suite):
    env = ready_env(suite, suite.tasks("train", 0, 1)[0])
    env.action_space.seed(0)
    obs, _ = env.reset(seed=1)
    for _episode in range(suite.episodes_per_trial):
        for _ in range(suite.horizon):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            assert obs.shape == env.observation_space.shape and obs.dtype == np.float64
            assert np.isfinite(obs).all() and math.isfinite(reward) and truncated is False
            if terminated:
                obs, _ = env.reset()
        obs, _ = env.reset()


def test_spaces(suite):
    obs_space, act_space = suite.spaces()
    assert obs_space.shape == (OBS_DIM[suite.name],) and obs_space.dtype == np.float64
    assert act_space.shape == (ACT_DIM[suite.name],)
    assert suite.observation_dim == OBS_DIM[suite.name]
    assert suite.action_dim == ACT_DIM[suite.name]
    env = suite.make_env()
    ctrl_range = env.model.actuator_ctrlrange.astype(np.float32)  # step clips in float64
    np.testing.assert_array_equal(act_space.low, ctrl_range[:, 0])
    np.testing.assert_array_equal(act_space.high, ctrl_range[:, 1])
    assert env.dt == pytest.approx(env.model.opt.timestep * FRAME_SKIP[suite.name])


def test_suite_metadata(suite):
    assert suite.horizon == 200 and suite.episodes_per_trial == 2 and not suite.has_success
    expected_keys = {"task", "reward", "train", "test", "done"} | (
        {"ood"} if "ood" in suite.splits else set())
    assert set(suite.description) == expected_keys
    assert suite.splits == (("train", "test", "ood") if suite.name in WITH_OOD
                            else ("train", "test"))
    assert suite.base and suite.task_param and suite.quirks
    info = suite.info()
    assert info["obs_dim"] == OBS_DIM[suite.name] and info["name"] == suite.name
    # the sampler pickles suites to worker processes
    assert pickle.loads(pickle.dumps(suite)).tasks("test", 0, 1) == suite.tasks("test", 0, 1)
    task = suite.tasks("test", 0, 1)[0]
    assert isinstance(task.label, str) and task.label and isinstance(task.value, float)


def test_ant_dir_quirk_is_documented():
    assert any("radians" in quirk for quirk in make_suite("ant-dir").quirks)


@pytest.mark.parametrize("env_name, width", [("cheetah-vel", 1), ("cheetah-dir", 1), ("ant-dir", 2),
                                             ("ant-goal", 2), ("humanoid-dir", 2)])
def test_task_features_for_the_oracle(env_name, width):
    from trmrl.envs import make_suite
    suite = make_suite(env_name)
    tasks = suite.tasks("test", 0, 4)
    features = np.stack([suite.task_features(t) for t in tasks])
    assert features.shape == (4, width) and features.dtype == np.float32
    assert len({tuple(f) for f in features}) > 1  # tasks are told apart


def test_params_task_features_are_all_exponents():
    from trmrl.envs import make_suite
    suite = make_suite("hopper-params")
    task = suite.tasks("test", 0, 1)[0]
    features = suite.task_features(task)
    expected = sum(np.size(v) for k, v in task.params.items() if k.endswith("_exp"))
    assert features.shape == (expected,) and np.isclose(features.mean(), task.value, atol=1e-5)
