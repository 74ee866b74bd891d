"""The native vector env: B environments stepped as one program, equal to B single envs (up to float32
summation order in batched matmuls, hence atol 1e-4)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from conftest import DEVICES

from greengossip import envs  # noqa: F401
from greengossip.envs.config import load_config


def short_tiny() -> dict:
    config = load_config("configs/tiny.yaml").model_dump()
    config["max_rounds"] = 12
    return config


def attack_config() -> dict:
    config = short_tiny()
    config["attack"] = {"fraction": 0.25, "kinds": ["sign_flip", "gaussian"], "nonfinite_probability": 0.2}
    config["privacy"] = {"mechanism": "laplace", "epsilon_per_report": 4.0, "budget": 20.0}
    return config


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", [short_tiny(), attack_config()], ids=["tiny", "attacks+privacy"])
@pytest.mark.parametrize("workers,kind", [(1, "thread"), (2, "thread"), (2, "process")],
                         ids=["one group", "two threads", "two processes"])
def test_vector_env_equals_single_envs_with_the_same_seeds_through_autoresets(config, device, workers, kind):
    if kind == "process" and device != "cpu":
        pytest.skip("worker processes run on the CPU only")
    n_envs, seed = 3, 5  # two workers: groups of 1 and 2 environments
    config = {**config, "device": device}
    vector = gym.make_vec("GreenGossip/EdgeLearning-v3", num_envs=n_envs, vectorization_mode="vector_entry_point",
                          workers=workers, worker_kind=kind, config=config)
    assert (vector.unwrapped.workers, vector.unwrapped.worker_kind) == (workers, kind)
    singles = [gym.make("GreenGossip/EdgeLearning-v3", config=config) for _ in range(n_envs)]
    obs, _ = vector.reset(seed=seed)
    single_obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(singles)]
    for key in obs:
        np.testing.assert_allclose(obs[key], np.stack([o[key] for o in single_obs]), atol=1e-4)
    rng = np.random.default_rng(0)
    n_nodes = singles[0].unwrapped.n_nodes
    episodes_ended = 0
    for _ in range(30):
        actions = rng.integers(0, 6, (n_envs, n_nodes))
        obs, rewards, terminated, truncated, info = vector.step(actions)
        for i, env in enumerate(singles):
            s_obs, s_reward, s_term, s_trunc, s_info = env.step(actions[i])
            assert rewards[i] == pytest.approx(s_reward, abs=1e-4)
            assert (terminated[i], truncated[i]) == (s_term, s_trunc)
            if s_term or s_trunc:
                episodes_ended += 1
                assert info["_final_obs"][i] and info["_final_info"][i]
                for key in s_obs:
                    np.testing.assert_allclose(info["final_obs"][i][key], s_obs[key], atol=1e-4)
                assert info["final_info"]["episode_carbon_g"][i] == pytest.approx(s_info["episode_carbon_g"])
                s_obs, _ = env.reset()
            for key in s_obs:
                np.testing.assert_allclose(obs[key][i], s_obs[key], atol=1e-4)
    assert episodes_ended >= n_envs  # autoreset really happened
    vector.close()


def test_vector_spaces_are_batched_single_spaces():
    vector = gym.make_vec("GreenGossip/EdgeLearning-v3", num_envs=4, vectorization_mode="vector_entry_point",
                          config="configs/tiny.yaml")
    obs, _ = vector.reset(seed=0)
    assert obs in vector.observation_space
    assert vector.action_masks().shape == (4, 8, 6)
    with pytest.raises(ValueError, match=r"shape \(4, 8\)"):
        vector.step(np.zeros((3, 8), dtype=np.int64))


def test_worker_threads_give_the_numbers_of_one_group():
    """Groups stepped in threads at once: each thread keeps its own scratch buffers, so the environments of one
    group do not write into another's (envs/dynamics/buffers.py). Same shapes on both sides, so shared buffers
    would collide."""
    config = {**short_tiny(), "n_nodes": 16}
    one = gym.make_vec("GreenGossip/EdgeLearning-v3", num_envs=4, vectorization_mode="vector_entry_point",
                       config=config)
    two = gym.make_vec("GreenGossip/EdgeLearning-v3", num_envs=4, vectorization_mode="vector_entry_point",
                       workers=2, config=config)
    assert len(two.unwrapped.fleets) == 2
    with pytest.raises(AttributeError, match="fleets"):
        two.unwrapped.fleet
    obs_one, _ = one.reset(seed=3)
    obs_two, _ = two.reset(seed=3)
    rng = np.random.default_rng(1)
    for _ in range(20):
        actions = rng.integers(0, 6, (4, 16))
        np.testing.assert_array_equal(one.unwrapped.action_masks(), two.unwrapped.action_masks())
        obs_one, rewards_one, *_ = one.step(actions)
        obs_two, rewards_two, *_ = two.step(actions)
        np.testing.assert_allclose(rewards_two, rewards_one, atol=1e-4)
        for key in obs_one:
            np.testing.assert_allclose(obs_two[key], obs_one[key], atol=1e-4)
    two.close()


def test_a_forked_child_steps_a_vector_env_with_workers():
    """The child inherits the thread pool without its threads; it must start its own, not wait forever."""
    import multiprocessing

    vector = gym.make_vec("GreenGossip/EdgeLearning-v3", num_envs=2, vectorization_mode="vector_entry_point",
                          workers=2, config="configs/tiny.yaml")
    vector.reset(seed=0)
    actions = np.full((2, 8), 2)
    vector.step(actions)  # the pool's threads are running in this process
    child = multiprocessing.get_context("fork").Process(target=vector.step, args=(actions,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0
    vector.close()


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_bad_worker_counts_are_named(workers):
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        gym.make_vec("GreenGossip/EdgeLearning-v3", num_envs=2, vectorization_mode="vector_entry_point",
                     workers=workers, config="configs/tiny.yaml")


def test_bad_worker_kinds_are_named():
    with pytest.raises(ValueError, match=r"worker_kind must be one of \('thread', 'process'\), got 'fork'"):
        gym.make_vec("GreenGossip/EdgeLearning-v3", num_envs=2, vectorization_mode="vector_entry_point",
                     workers=2, worker_kind="fork", config="configs/tiny.yaml")


def process_env(n_envs: int = 4, config="configs/tiny.yaml"):
    return gym.make_vec("GreenGossip/EdgeLearning-v3", num_envs=n_envs, vectorization_mode="vector_entry_point",
                        workers=2, worker_kind="process", config=config)


def test_worker_processes_give_the_numbers_of_worker_threads_and_close():
    """The same groups in processes and in threads: the same bits, masks included; closing stops the
    workers, and a reset after close starts new ones."""
    config = {**short_tiny(), "n_nodes": 16}
    threads = gym.make_vec("GreenGossip/EdgeLearning-v3", num_envs=4, vectorization_mode="vector_entry_point",
                           workers=2, config=config)
    processes = process_env(config=config)
    with pytest.raises(RuntimeError, match="reset"):
        processes.unwrapped.action_masks()
    with pytest.raises(AttributeError, match="worker process"):
        processes.unwrapped.fleets
    for round_trip in range(2):
        obs_threads, _ = threads.reset(seed=3)
        obs_processes, _ = processes.reset(seed=3)
        workers = [process._process for process in processes.unwrapped._processes]
        assert all(worker.is_alive() for worker in workers)
        rng = np.random.default_rng(1)
        for _ in range(15):  # through the autoresets of 12-round episodes
            np.testing.assert_array_equal(processes.unwrapped.action_masks(), threads.unwrapped.action_masks())
            actions = rng.integers(0, 6, (4, 16))
            obs_threads, rewards_threads, *_, info_threads = threads.step(actions)
            obs_processes, rewards_processes, *_, info_processes = processes.step(actions)
            np.testing.assert_array_equal(rewards_processes, rewards_threads)
            for key in obs_threads:
                np.testing.assert_array_equal(obs_processes[key], obs_threads[key])
            assert info_processes.keys() == info_threads.keys()
        processes.close()
        assert not any(worker.is_alive() for worker in workers)
    threads.close()


def test_a_failed_worker_process_is_reported_not_waited_for():
    vector = process_env()
    vector.reset(seed=0)
    actions = np.full((4, 8), 2)
    vector.step(actions)
    worker = vector.unwrapped._processes[1]._process
    worker.kill()
    worker.join()
    with pytest.raises(RuntimeError, match="worker process 1 of the vector env stopped"):
        vector.step(actions)
    vector.close()


def test_an_error_in_a_worker_process_comes_back_with_its_traceback():
    vector = process_env()
    vector.reset(seed=0)
    vector.unwrapped._processes[0].step_async(np.full((2, 3), 2))  # the wrong number of nodes reaches the worker
    with pytest.raises(RuntimeError, match="(?s)worker process 0 of the vector env failed:.*Traceback"):
        vector.unwrapped._processes[0].wait()
    vector.step(np.full((4, 8), 2))  # the worker is still there
    vector.close()


def test_a_forked_child_may_not_step_its_parents_worker_processes():
    """It would send commands to the parent's workers and take the answers the parent waits for."""
    import multiprocessing

    vector = process_env()
    vector.reset(seed=0)
    actions = np.full((4, 8), 2)

    def step_in_child(queue):
        try:
            vector.step(actions)
            queue.put("stepped")
        except RuntimeError as error:
            queue.put(str(error))

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=step_in_child, args=(queue,))
    child.start()
    message = queue.get(timeout=60)
    child.join(timeout=60)
    assert "belong to process" in message
    vector.step(actions)  # the parent's workers were not disturbed
    vector.close()


def test_worker_processes_need_the_cpu(monkeypatch):
    from greengossip.envs import config as config_module

    # a CUDA config must load here, where torch may see no GPU: the refusal under test comes after loading
    monkeypatch.setattr(config_module, "available_devices", lambda: ["cpu", "cuda", "cuda:0"])
    config = {**short_tiny(), "device": "cuda"}
    with pytest.raises(ValueError, match="CPU only"):
        gym.make_vec("GreenGossip/EdgeLearning-v3", num_envs=2, vectorization_mode="vector_entry_point",
                     workers=2, worker_kind="process", config=config)


@pytest.mark.parametrize("workers,kind", [(1, "thread"), (2, "thread"), (2, "process")])
def test_maskable_ppo_trains_on_the_sb3_adapter(workers, kind):
    from sb3_contrib import MaskablePPO

    from greengossip.envs.sb3_vec_env import GossipVecEnv

    venv = GossipVecEnv(num_envs=4, config="configs/tiny.yaml", seed=0, workers=workers, worker_kind=kind)
    assert (venv.venv.workers, venv.venv.worker_kind) == (workers, kind)
    model = MaskablePPO("MultiInputPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=128)
    assert model.num_timesteps >= 128
    obs = venv.reset()
    actions, _ = model.predict(obs, action_masks=venv.action_masks())
    assert actions.shape == (4, 8)
    venv.close()


def test_after_a_failed_worker_the_answers_stay_in_step(monkeypatch):
    """Group 0 fails, group 1 steps: the next step must read the next answers, not the one left over."""
    from greengossip.envs import env_groups

    play = env_groups.play_group_round

    def fails_on_fives(fleet, config, rngs, actions):
        if bool((actions == 5).all()):
            raise ValueError("planted failure")
        return play(fleet, config, rngs, actions)

    monkeypatch.setattr(env_groups, "play_group_round", fails_on_fives)  # forked workers inherit the patch
    vector = process_env()
    vector.reset(seed=0)
    actions = np.full((4, 8), 2)
    *_, info = vector.step(actions)
    assert (info["round"] == 1).all()
    actions[:2] = 5  # group 0's environments
    with pytest.raises(RuntimeError, match="(?s)worker process 0 .* failed.*planted failure"):
        vector.step(actions)
    *_, info = vector.step(np.full((4, 8), 2))
    np.testing.assert_array_equal(info["round"], [2, 2, 3, 3])  # group 1 stepped in the failed step too
    vector.close()
