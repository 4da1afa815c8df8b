"""Meta-World suites: splits, seeding, goal handling and full-length episodes.

Benchmark objects are cached per process, so every test here shares one ML1 build per
(class, seed) and one ML10 build (~10 s); ML45 (~30 s to build) is in the slow test only.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("metaworld")

from trmrl.envs import SuiteError, Task, make_suite, metaworld_suites, suite_class  # noqa: E402
from trmrl.envs.base import EnvStepError  # noqa: E402

ML1_NAMES = ("ml1-reach", "ml1-push", "ml1-pick-place")
ALL_NAMES = (*ML1_NAMES, "ml10", "ml45")
GOAL_SLOT = slice(36, 39)  # the goal position in a 39-dim Meta-World observation
H = 500


@pytest.fixture(scope="module")
def suites():
    return {name: make_suite(name) for name in ALL_NAMES}


def goals(tasks: list[Task]) -> set[tuple[float, ...]]:
    return {tuple(t.params["goal"]) for t in tasks}


def run_episode(env, seed: int, steps: int = H) -> bool:
    """Random actions for ``steps`` steps; whether info['success'] held at any step."""
    obs, _ = env.reset(seed=seed)
    assert obs.shape == (39,) and np.all(obs[GOAL_SLOT] == 0)
    succeeded = False
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert isinstance(info["success"], bool) and isinstance(reward, float)
        assert not terminated and truncated is False
        assert np.all(obs[GOAL_SLOT] == 0)
        succeeded |= info["success"]
    return succeeded


# -- class attributes --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_NAMES)
def test_class_attributes(name):
    cls = suite_class(name)  # read without building any benchmark
    assert cls.name == name and cls.base.startswith("Meta-World v3 ")
    assert (cls.horizon, cls.episodes_per_trial, cls.splits, cls.has_success) == (
        500, 10, ("train", "test"), True)
    assert set(cls.description) == {"task", "reward", "train", "test", "done"}
    assert any("late-binding" in q for q in cls.quirks)
    assert cls.task_param


def test_spaces_without_building_a_benchmark(suites):
    obs_space, act_space = suites["ml1-reach"].spaces()
    assert obs_space.shape == (39,) and act_space.shape == (4,)
    assert np.all(obs_space.low[GOAL_SLOT] == 0) and np.all(obs_space.high[GOAL_SLOT] == 0)


# -- splits and seeds --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ml1-reach", "ml1-push"])
def test_ml1_splits_and_seeds(suites, name):
    suite = suites[name]
    train, test = suite.tasks("train", 0), suite.tasks("test", 0)
    assert len(train) == len(test) == 50
    assert not goals(train) & goals(test)  # metaworld's train and test goals never overlap
    again = suite.tasks("train", 0)
    assert [t.params for t in again] == [t.params for t in train]
    assert not goals(suite.tasks("train", 1)) & goals(train)
    assert [t.value for t in train] == list(range(50))
    assert train[3].label == f"{suite.ml1_env_name} #3" and train[3].index == 3
    assert suite.tasks("train", 0, n=5) == train[:5]


def test_ml1_test_goals_are_the_next_seeds_train_goals(suites):
    # metaworld draws ML1's test goals with seed + 1 (documented as a quirk): pin it down.
    suite = suites["ml1-reach"]
    assert goals(suite.tasks("test", 0)) == goals(suite.tasks("train", 1))


def test_ml10_train_and_test_classes_are_disjoint(suites):
    suite = suites["ml10"]
    train_classes, test_classes = suite.class_dicts()
    assert len(train_classes) == 10 and len(test_classes) == 5
    assert not set(train_classes) & set(test_classes)
    train, test = suite.tasks("train", 0), suite.tasks("test", 0)
    assert {t.params["env_name"] for t in train} == set(train_classes)
    assert {t.params["env_name"] for t in test} == set(test_classes)
    assert len(train) == 500 and len(test) == 250
    values = {t.params["env_name"]: t.value for t in train + test}
    assert sorted(values, key=values.get) == suite.class_names()


def test_ml10_eval_tasks_spread_over_classes(suites):
    suite = suites["ml10"]
    picked = suite.eval_tasks("test", 0)
    assert len(picked) == 20
    per_class = {name: sum(t.params["env_name"] == name for t in picked)
                 for name in suite.class_dicts()[1]}
    assert set(per_class.values()) == {4}
    assert [t.label for t in suite.eval_tasks("test", 0)] == [t.label for t in picked]
    # round-robin in sorted class order, goals in metaworld's order within a class
    assert [t.label for t in picked[:6]] == [
        "door-close-v3 #0", "drawer-open-v3 #0", "lever-pull-v3 #0", "shelf-place-v3 #0",
        "sweep-into-v3 #0", "door-close-v3 #1"]
    train_picked = suite.eval_tasks("train", 0)
    assert len({t.params["env_name"] for t in train_picked}) == 10


def test_sample_tasks(suites):
    suite = suites["ml10"]
    first = suite.sample_tasks(np.random.default_rng(7), 30, seed=0)
    second = suite.sample_tasks(np.random.default_rng(7), 30, seed=0)
    assert [t.params for t in first] == [t.params for t in second]
    train = suite.tasks("train", 0)
    for task in first:
        assert task.split == "train" and task.params == train[task.index].params
    assert len({t.params["env_name"] for t in first}) > 1


def test_bad_input(suites):
    suite = suites["ml1-reach"]
    with pytest.raises(SuiteError, match="train, test"):
        suite.tasks("ood", 0)
    with pytest.raises(SuiteError, match="train, test"):
        suite.eval_tasks("ood", 0)
    for seed in (-1, 1.5, True, 2**40):
        with pytest.raises(SuiteError):
            suite.tasks("train", seed)
    with pytest.raises(SuiteError):
        suite.tasks("train", 0, n=-1)
    env = suite.make_env()
    task = suite.tasks("train", 0)[0]
    with pytest.raises(SuiteError, match="ml1-push"):
        suites["ml1-push"].make_env().set_task(task)
    tampered = Task(task.env, task.split, task.index,
                    {**task.params, "goal": [g + 0.01 for g in task.params["goal"]]})
    with pytest.raises(SuiteError, match="does not match"):
        env.set_task(tampered)
    with pytest.raises(SuiteError, match="out of range"):
        env.set_task(Task(task.env, task.split, 99, {**task.params, "mw_index": 99}))


# -- the env -----------------------------------------------------------------------------------

def test_step_before_set_task_or_reset_raises(suites):
    suite = suites["ml1-reach"]
    env = suite.make_env()
    with pytest.raises(RuntimeError, match="set_task"):
        env.step(np.zeros(4))
    with pytest.raises(RuntimeError, match="set_task"):
        env.reset()
    env.set_task(suite.tasks("train", 0)[0])
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(4))


@pytest.mark.parametrize("name", ["ml1-reach", "ml1-push"])
def test_env_uses_the_task_goal_and_hides_it(suites, name):
    suite = suites[name]
    first, second = suite.tasks("train", 0)[:2]
    env = suite.make_env(first)
    obs, _ = env.reset(seed=0)
    target = env.metaworld_env._target_pos
    # reach: rand_vec = object start (3) + goal (3); push keeps the puck's height as goal z
    checked = slice(0, 3) if name == "ml1-reach" else slice(0, 2)
    assert np.allclose(target[checked], first.params["goal"][3:6][checked])
    assert np.all(obs[GOAL_SLOT] == 0)
    reward_first = env.step(np.zeros(4))[1]
    env.set_task(second)
    env.reset(seed=0)
    assert not np.allclose(env.metaworld_env._target_pos, target)
    assert env.step(np.zeros(4))[1] != reward_first  # the hidden goal shapes the reward


def test_reset_seed_and_json_round_trip(suites):
    suite = suites["ml1-push"]
    task = suite.tasks("test", 0)[5]
    restored = Task(**task.to_json())
    actions = np.random.default_rng(0).uniform(-1, 1, size=(20, 4))
    trajectories = []
    for t in (task, restored):
        env = suite.make_env(t)
        env.reset(seed=3)
        trajectories.append(np.stack([env.step(a)[0] for a in actions]))
    assert np.array_equal(*trajectories)


@pytest.mark.parametrize("name", [*ML1_NAMES, "ml10"])
def test_episodes_run_past_metaworld_limit(suites, name):
    suite = suites[name]
    task = suite.eval_tasks("test", 0, n=1)[0]
    env = suite.make_env(task)
    for episode in range(2):
        assert isinstance(run_episode(env, seed=episode), bool)
    # metaworld alone raises on step 501; our sampler may overrun or reset, both work
    env.step(env.action_space.sample())
    env.reset(seed=2)
    env.step(env.action_space.sample())
    env.close()


def test_ml10_env_switches_across_all_classes(suites):
    suite = suites["ml10"]
    env = suite.make_env()
    for split in ("train", "test"):
        for task in suite.eval_tasks(split, 0, n=len(suite.class_dicts()[split == "test"])):
            env.set_task(task)
            obs, _ = env.reset(seed=0)
            assert env.metaworld_env.__class__ is suite.class_dicts()[split == "test"][
                task.params["env_name"]]
            assert obs in env.observation_space
            env.step(env.action_space.sample())
    # it holds one metaworld env at a time, of the current task's class
    assert env._held is env.metaworld_env and env._held_name == task.params["env_name"]


def test_envs_pass_metaworld_envs_of_a_class_on(suites, monkeypatch):
    monkeypatch.setattr(metaworld_suites, "_IDLE_ENVS", {})
    suite = suites["ml10"]
    (test_task, *_), (train_task, *_) = (suite.eval_tasks(split, 0, 1) for split in ("test", "train"))
    a, b = suite.make_env(test_task), suite.make_env(train_task)
    testing, training = a.metaworld_env, b.metaworld_env
    assert type(testing) is not type(training)
    a.set_task(train_task)  # no idle metaworld env of the class: a new one; a's goes idle
    assert a.metaworld_env not in (testing, training)
    assert metaworld_suites._IDLE_ENVS[type(testing)] == [testing]
    b.set_task(test_task)  # takes a's, and leaves its own
    assert b.metaworld_env is testing
    assert metaworld_suites._IDLE_ENVS[type(training)] == [training]
    same_class = next(t for t in suite.tasks("test", 0)[1:]
                      if t.params["env_name"] == test_task.params["env_name"])
    b.set_task(same_class)  # another goal of the class keeps the metaworld env
    assert b.metaworld_env is testing
    b.close()
    assert b.metaworld_env is None and testing not in metaworld_suites._IDLE_ENVS[type(testing)]


def used_and_fresh_trials(suite, tasks, steps=60):
    """Observations of a trial of ``tasks[1]`` on a metaworld env that ran ``tasks[0]`` for
    ``steps`` steps first, and on a new one."""
    actions = np.random.default_rng(0).uniform(-1, 1, (2 * steps, 4)).astype(np.float32)
    used = suite.make_env(tasks[0])
    used.reset(seed=1)
    for action in actions[:steps]:
        used.step(action)
    used.set_task(tasks[1])
    fresh = suite.make_env(tasks[1])  # none of the class idle: used holds it
    assert fresh.metaworld_env is not used.metaworld_env
    trials = []
    for env in (used, fresh):
        trials.append([env.reset(seed=2)[0]] + [env.step(a)[0] for a in actions[steps:]])
        env.close()
    return np.array(trials)


@pytest.mark.parametrize("benchmark", ["ml10", pytest.param("ml45", marks=pytest.mark.slow)])
def test_a_used_metaworld_env_runs_a_task_as_a_fresh_one(suites, benchmark, monkeypatch):
    # what lets envs pass their metaworld envs on (and a population's trial run in another
    # slot than its own sampler's): after set_task and reset, nothing of an earlier task's
    # episode is left, for every class (ml10: its 5 test classes; ml45: all 50 classes)
    monkeypatch.setattr(metaworld_suites, "_IDLE_ENVS", {})
    suite = suites[benchmark]
    by_class = {}
    for task in suite.tasks("test", 0) + (suite.tasks("train", 0) if benchmark == "ml45" else []):
        by_class.setdefault(task.params["env_name"], []).append(task)
    for name, tasks in by_class.items():
        used, fresh = used_and_fresh_trials(suite, tasks)
        assert np.array_equal(used, fresh), name


@pytest.mark.slow
def test_ml45(suites):
    suite = suites["ml45"]
    train, test = suite.tasks("train", 0), suite.tasks("test", 0)
    assert len(train) == 45 * 50 and len(test) == 5 * 50
    train_classes, test_classes = suite.class_dicts()
    assert not set(train_classes) & set(test_classes)
    picked = suite.eval_tasks("test", 0)
    assert sorted(t.params["env_name"] for t in picked) == sorted(list(test_classes) * 4)
    env = suite.make_env()
    for task in suite.eval_tasks("train", 0, n=45) + picked[:5]:  # every class once
        env.set_task(task)
        env.reset(seed=0)
        env.step(env.action_space.sample())
    env.set_task(picked[0])
    for episode in range(2):
        assert isinstance(run_episode(env, seed=episode), bool)


def test_task_features_tell_goals_and_classes_apart():
    from trmrl.envs import make_suite
    ml1 = make_suite("ml1-reach")
    a, b = ml1.tasks("train", 0, 2)
    assert ml1.task_features(a).shape == (12,) and not np.array_equal(ml1.task_features(a), ml1.task_features(b))
    ml10 = make_suite("ml10")
    tasks = ml10.eval_tasks("test", 0, 5)
    features = np.stack([ml10.task_features(t) for t in tasks])
    assert features.shape == (5, 15 + 12)
    assert (features[:, :15].sum(1) == 1).all() and len({f.argmax() for f in features[:, :15]}) == 5


# -- our stepping is metaworld's own -----------------------------------------------------------

def bare_metaworld_env(suite, mw_task):
    """A metaworld env of the task's class, made and set as a plain metaworld user would."""
    import metaworld
    classes = (metaworld.env_dict.ML10_V3 if suite.benchmark == "ML10"
               else {"train": metaworld.env_dict.ALL_V3_ENVIRONMENTS, "test": {}})
    env = {**classes["train"], **classes["test"]}[mw_task.env_name]()
    env.set_task(mw_task)
    return env


@pytest.mark.parametrize("name", ["ml1-push", "ml10"])
def test_sampled_trials_are_metaworlds_own_steps(suites, name):
    # The sampler's observations, rewards and successes equal those of a bare metaworld env
    # stepped with the same actions, clipped to the box (the policy draws beyond it), and
    # reset as the sampler resets: exact, since both run metaworld's step on the same state.
    import metaworld

    from trmrl.sampling import RandomPolicy, TrialSampler
    suite = suites[name]
    tasks = suite.eval_tasks("test", 0, 3)  # ml10: three classes in one sampler's envs
    if name == "ml10":
        mw_tasks = [suite.metaworld_task(task) for task in tasks]
    else:  # the goals as metaworld's own benchmark object gives them
        benchmark = metaworld.ML1(suite.ml1_env_name, seed=0)
        mw_tasks = [benchmark.test_tasks[task.index] for task in tasks]
    _, act_space = suite.spaces()
    horizon, episodes = 40, 2
    policy = RandomPolicy(1.5 * act_space.low, 1.5 * act_space.high, seed=0)
    with TrialSampler(suite, num_envs=2, horizon=horizon, episodes_per_trial=episodes,
                      seed=5) as sampler:  # 3 tasks on 2 slots: two rounds
        batch = sampler.run(policy, tasks)
    assert (np.abs(batch.action) > 1).any()
    for row, mw_task in enumerate(mw_tasks):
        env = bare_metaworld_env(suite, mw_task)
        for episode in range(episodes):
            env.seed(sampler.reset_seed(call=0, trial=row, episode=episode))
            obs, _ = env.reset()
            steps = slice(episode * horizon, (episode + 1) * horizon)
            assert np.array_equal(batch.obs[row, steps.start], obs.astype(np.float32))
            rewards = []
            for t in range(steps.start, steps.stop):
                obs, reward, _, _, info = env.step(np.clip(batch.action[row, t], -1, 1))
                rewards.append(reward)
                assert np.array_equal(batch.next_obs[row, t], obs.astype(np.float32))
                assert batch.reward[row, t] == np.float32(reward)
                assert batch.success[row, t] == info["success"]
            # float64 rewards, summed in step order as the sampler sums them
            assert batch.episode_return[row, episode] == np.cumsum(rewards)[-1]


def test_step_batch_is_metaworlds_step_in_float64(suites):
    suite = suites["ml10"]
    tasks = suite.eval_tasks("train", 0, 4)
    ours = [suite.make_env(task) for task in tasks]
    bare = [bare_metaworld_env(suite, suite.metaworld_task(task)) for task in tasks]
    for env in (*ours, *bare):
        env.reset(seed=1)
    rng = np.random.default_rng(0)
    for _ in range(30):
        actions = rng.uniform(-1.5, 1.5, (4, 4)).astype(np.float32)
        obs, reward, terminated, success = suite.step_batch(ours, actions)
        want = [env.step(np.clip(a, -1, 1)) for env, a in zip(bare, actions)]
        assert obs.dtype == reward.dtype == success.dtype == np.float64
        assert np.array_equal(obs, np.stack([w[0] for w in want]))
        assert np.array_equal(reward, [w[1] for w in want])
        assert np.array_equal(terminated, [w[2] for w in want])
        assert np.array_equal(success, [w[4]["success"] for w in want])
    ours[2]._needs_reset = True  # as after set_task: the batch names the env that cannot step
    with pytest.raises(EnvStepError) as caught:
        suite.step_batch(ours, actions)
    assert caught.value.index == 2 and "before set_task and reset" in str(caught.value.__cause__)
    with pytest.raises(ValueError, match=r"actions must have shape \(4, 4\), got \(3, 4\)"):
        suite.step_batch(ours, actions[:3])
