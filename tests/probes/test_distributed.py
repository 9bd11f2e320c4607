"""Coalition evaluation on a local Ray cluster gives the local run's values and store.

One cluster (2 CPUs) and one pair of workers (half a CPU each, leaving room for one more) serve
the whole module: starting Ray and a worker
process that imports torch takes most of this file's time, the evaluations themselves are tiny.

Equality is asserted exactly (np.array_equal), not within a tolerance: the workers run the same
CPU kernels with the same thread count on the very chunks the local engine forms (the driver cuts
tasks at the engine's chunk boundaries, checked on its own below), so there is no rounding
difference to tolerate; any difference means the inputs, model or chunking differ.
"""

import socket
import sys
from functools import partial

import numpy as np
import pytest
import ray
import ray.cloudpickle
import torch
import tiny_models
from token_batches import token_batch

import surgery
from probes.distributed import DistributedError, RayEvaluator, connect, ray_model_game
from probes.estimators import estimate
from probes.metrics import LogProb, Loss
from probes.model_game import model_game
from surgery.engine import AblationEngine

MAX_ROWS = 16  # with a batch of 4 inputs: 4 coalitions per engine chunk, so requests span many tasks
FACTORY = partial(tiny_models.build, "gpt2")


@pytest.fixture(scope="module")
def cluster():
    # Workers cannot import the tests directory; ship the factory's module by value instead.
    ray.cloudpickle.register_pickle_by_value(tiny_models)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same thread count as each worker, and kind to a 2-core machine
    ray.init(num_cpus=2, object_store_memory=80 * 1024**2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    torch.set_num_threads(threads)
    ray.cloudpickle.unregister_pickle_by_value(tiny_models)


@pytest.fixture(scope="module")
def setup(cluster):
    loaded = surgery.load(FACTORY())
    batch = token_batch(loaded, batch=4)
    evaluator = RayEvaluator(FACTORY, batch, Loss(), "heads", max_rows=MAX_ROWS, workers=2, num_cpus=0.5)
    yield loaded, batch, evaluator
    evaluator.close()


def local_game(loaded, batch, store=None):
    return model_game(loaded, batch, Loss(), "heads", max_rows=MAX_ROWS, store=store)


def random_coalitions(n_players, m, seed=0):
    return np.random.default_rng(seed).random((m, n_players)) < 0.5


def test_ray_game_values_and_fingerprint_equal_the_local_game(setup):
    loaded, batch, evaluator = setup
    local, remote = local_game(loaded, batch), evaluator.game()
    assert remote.fingerprint == local.fingerprint
    coalitions = np.vstack([np.zeros((1, local.n_players), bool), np.ones((1, local.n_players), bool),
                            random_coalitions(local.n_players, 50)])
    before = list(evaluator.tasks_per_worker)
    assert np.array_equal(remote(coalitions), local(coalitions))
    assert remote.n_evaluations == local.n_evaluations > 0
    assert all(after > b for after, b in zip(evaluator.tasks_per_worker, before)), "both workers took tasks"


def test_tasks_are_cut_at_the_local_engine_chunk_boundaries(setup):
    # The value equality above holds on this tiny model whatever the chunking; on larger models a
    # coalition's last bits can depend on its chunk-mates, so the tasks must be the engine's chunks.
    loaded, batch, evaluator = setup
    coalitions = random_coalitions(evaluator.n_players, 50, seed=5)
    engine = AblationEngine(loaded, "heads", max_rows=MAX_ROWS)
    engine_chunks = [idx.tolist() for idx, _ in engine._chunks(torch.from_numpy(coalitions), batch)]
    order = evaluator._engine_order(coalitions)
    step = evaluator.coalitions_per_task
    assert [order[i:i + step].tolist() for i in range(0, len(order), step)] == engine_chunks


def test_estimator_run_on_ray_equals_the_local_run(setup):
    loaded, batch, evaluator = setup
    on_ray = estimate(evaluator.game(), budget=60, seed=3)
    local = estimate(local_game(loaded, batch), budget=60, seed=3)
    assert on_ray.names == local.names
    assert np.array_equal(on_ray.means, local.means)
    assert np.array_equal(on_ray.stderrs, local.stderrs)


def test_store_written_on_ray_is_reused_by_a_local_run(setup, tmp_path):
    loaded, batch, evaluator = setup
    coalitions = random_coalitions(evaluator.n_players, 30, seed=1)
    remote_values = evaluator.game(store=tmp_path)(coalitions)
    local = local_game(loaded, batch, store=tmp_path)
    assert np.array_equal(local(coalitions), remote_values)
    assert local.n_evaluations == 0


def test_each_task_reaches_the_store_before_the_request_returns(setup, tmp_path):
    loaded, batch, evaluator = setup
    coalitions = np.unique(random_coalitions(evaluator.n_players, 40, seed=2), axis=0)
    per_task = evaluator.coalitions_per_task
    stored_when_reported = []

    def stop_after_two_tasks(n):
        stored_when_reported.append(len(store))
        if len(stored_when_reported) == 2:
            raise KeyboardInterrupt  # a user stopping the run midway

    game = evaluator.game(store=tmp_path, progress=stop_after_two_tasks)
    store = game.store
    with pytest.raises(KeyboardInterrupt):
        game(coalitions)
    assert stored_when_reported == [per_task, 2 * per_task]
    # A fresh run on the same store computes only what the interrupted one had not finished.
    resumed = evaluator.game(store=tmp_path)
    values = resumed(coalitions)
    assert resumed.n_evaluations == len(coalitions) - 2 * per_task
    assert np.array_equal(values, local_game(loaded, batch)(coalitions))


def test_ray_model_game_takes_model_game_arguments(setup):
    loaded, batch, _ = setup
    game = ray_model_game(FACTORY, batch, LogProb(), "layers", task_name="t", max_rows=MAX_ROWS, workers=1,
                          num_cpus=0.5)
    try:
        local = model_game(loaded, batch, LogProb(), "layers", task_name="t", max_rows=MAX_ROWS)
        assert game.fingerprint == local.fingerprint
        coalitions = random_coalitions(game.n_players, 8, seed=4)
        assert np.array_equal(game(coalitions), local(coalitions))
    finally:
        game.evaluator.close()


def test_workers_that_cannot_be_scheduled_give_a_clear_error(setup):
    _, batch, _ = setup
    with pytest.raises(DistributedError, match=r"0 of 1 Ray workers started.*num_gpus=1"):
        RayEvaluator(FACTORY, batch, Loss(), workers=1, num_gpus=1, startup_timeout_s=1)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["ray://", ""])
def test_unreachable_address_gives_a_clear_error(cluster, monkeypatch, scheme):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process
    with pytest.raises(DistributedError, match=r"cannot reach the Ray cluster.*ray start --head"):
        connect(f"{scheme}127.0.0.1:{closed_port()}", connect_timeout_s=2)


@pytest.mark.parametrize("address", ["http://head:10001", "ray://head", "head"])
def test_malformed_address_gives_a_clear_error(cluster, monkeypatch, address):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(DistributedError, match="cannot read Ray address"):
        connect(address)


def test_another_address_while_connected_is_refused(cluster):
    with pytest.raises(DistributedError, match="already connected"):
        connect(f"ray://127.0.0.1:{closed_port()}")


def test_missing_ray_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    batch = token_batch(surgery.load(FACTORY()), batch=2)
    with pytest.raises(DistributedError, match="pip install ray"):
        RayEvaluator(FACTORY, batch, Loss())
