"""Coalition evaluation fanned out over a Ray cluster.

    game = ray_model_game("smollm2-135m", batch, metric, "heads", workers=4, num_gpus=1,
                          address="ray://head-node:10001", store="runs/heads-store")
    values = estimate(game, budget=2000, seed=0)

Each Ray actor loads the model once and keeps an AblationEngine; the driver (this process) never
loads the model. A block of coalitions asked for by the Game is cut into tasks, handed to the
workers as they free up, and each finished task is appended to the Game's store the moment it
arrives, so a run that dies halfway keeps everything finished so far.

Why the results equal a local `model_game` bit for bit (same device and dtype): the engine groups
coalitions by their first ablated layer and runs fixed-size chunks, and a coalition's logits can
depend (in the last bits) on which chunk it shares a forward with. The driver therefore sorts a
block exactly as `AblationEngine._chunks` does and cuts tasks only at chunk boundaries, so every
worker runs the very chunks the local engine would. The fingerprint is built from the same parts
as `model_game`'s, so a store written here is reused by a local run and vice versa.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

import numpy as np
import torch

from probes.errors import ProbeError
from probes.game import Game, pack_coalitions
from probes.metrics import metric_sign
from probes.model_game import game_fingerprint
from surgery.engine import chunk_order, first_ablated_layer

INSTALL_HINT = ("run `pip install ray` (for ray:// addresses `pip install 'ray[client]'`), "
                "or install the extra: `pip install 'model-surgery[ray]'`")


class DistributedError(ProbeError):
    """Ray is missing, the cluster cannot be reached, or its workers cannot serve the game."""


def import_ray():
    """The ray module, or a DistributedError saying how to install it."""
    try:
        import ray
    except ImportError as error:
        raise DistributedError(f"the Ray backend needs the `ray` package, which is not installed: {INSTALL_HINT}") from error
    return ray


# ------------------------------------------------------------------------------------ connecting
def _reachable(host: str, port: int, timeout_s: float) -> str | None:
    """None if something listens at host:port, else why not (checked first because ray.init
    retries an unreachable address for minutes before failing)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as error:
        return str(error) or type(error).__name__


def connect(address: str | None = None, *, connect_timeout_s: float = 5.0, **init_kwargs) -> None:
    """Join the Ray cluster at `address`, or start a local one when address is None.

    address: None (reuse the current connection, or start a local cluster on this machine),
        "auto" (the cluster `ray start` runs on this machine, or $RAY_ADDRESS),
        "ray://host:10001" (Ray Client, from any machine that reaches the head node), or
        "host:6379" (the head's GCS address, from a machine inside the cluster).
    init_kwargs: passed to ray.init (num_cpus, object_store_memory, runtime_env, ...).
    """
    ray = import_ray()
    if ray.is_initialized():
        if address in (None, "auto") or address == _current_address(ray):
            return
        raise DistributedError(
            f"Ray is already connected (to {_current_address(ray) or 'a cluster'}), so address={address!r} cannot be "
            "joined; pass address=None to use the current connection, or call ray.shutdown() first")
    if address not in (None, "auto"):
        parts = urlsplit(address if "://" in address else f"tcp://{address}")
        if parts.scheme not in ("ray", "tcp") or not parts.hostname or parts.port is None:
            raise DistributedError(
                f"cannot read Ray address {address!r}: use 'ray://host:port' (Ray Client, port 10001 by default), "
                "'host:port' (the head node's GCS, port 6379 by default), 'auto', or None for a local cluster")
        why = _reachable(parts.hostname, parts.port, connect_timeout_s)
        if why is not None:
            raise DistributedError(
                f"cannot reach the Ray cluster at {address!r} ({why}). Is the head node running "
                "(`ray start --head` on it) and is the port open from this machine?")
    init_kwargs.setdefault("include_dashboard", False)
    init_kwargs.setdefault("log_to_driver", True)
    try:
        ray.init(address=address, **init_kwargs)
    except Exception as error:  # ray raises ConnectionError, ValueError, RuntimeError depending on the case
        if address is None:
            raise DistributedError(f"could not start a local Ray cluster: {error}") from error
        # A head that listens but never answers is, since Ray 2.52, most often token authentication.
        raise DistributedError(
            f"could not connect to the Ray cluster at {address!r}: {error}. If the cluster uses token "
            "authentication, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (`ray get-auth-token` on the head) here") from error


def _current_address(ray) -> str | None:
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # Ray Client connections have no GCS address on the driver
        return None


# ------------------------------------------------------------------------------------ the worker
def _load_on_worker(model_spec):
    """LoadedModel from a spec a worker can rebuild: a name or path for surgery.load, a
    zero-argument factory returning a transformers model, or a (pickled) model object."""
    import torch.nn as nn

    from surgery.loading import load

    if isinstance(model_spec, (str, os.PathLike, nn.Module)):
        loaded = load(model_spec)  # on CPU first: the digest is computed there, as in a local CPU run
    elif callable(model_spec):
        loaded = load(model_spec())
    else:
        raise DistributedError(f"cannot build a model on a worker from {type(model_spec).__name__}")
    return loaded


class ModelWorker:
    """One Ray actor: the model loaded once, an AblationEngine over the players, the batch and
    metric kept in memory; `evaluate` runs a block of coalitions."""

    def __init__(self, model_spec, players, mode, reference, max_rows, batch, metric, device, torch_threads):
        import torch

        from probes.model_game import model_digest
        from surgery.engine import AblationEngine

        torch.set_num_threads(torch_threads)  # Ray's CPU share for this actor, not every core of the node
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        loaded = _load_on_worker(model_spec)
        self.digest = model_digest(loaded)
        loaded.model.to(device)
        self.engine = AblationEngine(loaded, players, mode=mode, reference=reference, max_rows=max_rows)
        self.batch = batch.to(device)
        self.metric = metric

    def describe(self) -> dict:
        import ray

        return {
            "players": self.engine.players,
            "first_layer": self.engine.layout.first_layer_of().numpy(),
            "n_layers": self.engine.loaded.components.n_layers,
            "source": str(self.engine.loaded.source),
            "model_digest": self.digest,
            "node": ray.get_runtime_context().get_node_id(),
            "device": str(self.engine.loaded.device),
        }

    def evaluate(self, coalitions: np.ndarray) -> np.ndarray:
        import torch

        masks = torch.from_numpy(np.array(coalitions, dtype=bool))  # a writable copy of Ray's read-only buffer
        return self.engine.evaluate(masks, self.batch, self.metric).numpy()


# ------------------------------------------------------------------------------------ the driver
class RayEvaluator:
    """Raw metric values of coalitions, computed by `workers` Ray actors (model loaded once each).

    model: a name or path `surgery.load` takes (embedded `smollm2-135m`, a local directory, a
        .gguf file, a hub id) that every node can load; a picklable zero-argument factory that
        returns a transformers model; or a small model object (pickled to each worker).
    workers: number of actors; None = as many as the cluster's GPUs (num_gpus > 0) or CPUs allow.
    num_cpus, num_gpus: Ray resources per actor (num_gpus may be fractional to share a GPU).
    device: where each worker puts the model; None = cuda if the worker sees a GPU, else cpu.
    chunks_per_task: engine chunks (max_rows // batch size coalitions each) per Ray task; the
        unit of dispatch and of streaming into the store.
    torch_threads: intra-op threads per worker (default: its num_cpus).
    """

    def __init__(self, model, batch, metric: Callable, players: str | Sequence = "heads", *, mode: str = "zero",
                 reference=None, max_rows: int = 64, workers: int | None = None, address: str | None = None,
                 num_cpus: float = 1, num_gpus: float = 0, device: str | None = None, chunks_per_task: int = 1,
                 torch_threads: int | None = None, startup_timeout_s: float = 600.0,
                 ray_init_kwargs: dict | None = None):
        from probes.metrics import KLDivergence
        from surgery.loading import LoadedModel

        if isinstance(model, LoadedModel):
            raise DistributedError("pass the name/path the model was loaded from (or a factory), not a LoadedModel: "
                                   "each Ray worker loads its own copy")
        if isinstance(metric, KLDivergence) and hasattr(metric._source, "n_players"):
            raise DistributedError("this KLDivergence metric holds a local AblationEngine (a whole model) to get its "
                                   "clean logits; pass clean=<tensor [B, P, vocab]> of the clean logits instead")
        if chunks_per_task < 1 or max_rows < 1:
            raise DistributedError(f"chunks_per_task and max_rows must be >= 1, got {chunks_per_task}, {max_rows}")
        ray = import_ray()
        connect(address, **(ray_init_kwargs or {}))
        self._ray = ray
        self.batch, self.metric, self.mode, self.reference = batch, metric, mode, reference
        # Coalitions per engine forward, exactly as AblationEngine._chunks computes it.
        self.coalitions_per_chunk = max(1, max_rows // batch.size)
        self.coalitions_per_task = self.coalitions_per_chunk * chunks_per_task
        workers = workers if workers is not None else _workers_that_fit(ray, num_cpus, num_gpus)
        if workers < 1:
            raise DistributedError(f"workers must be >= 1, got {workers}")
        threads = torch_threads or max(1, int(num_cpus))
        # No actor restarts: Ray cannot promise a restarted actor its constructor arguments (ray
        # issue 53727). A lost worker fails the call instead; the store keeps every finished task,
        # so rerunning with the same store resumes where it stopped.
        actor = ray.remote(ModelWorker).options(num_cpus=num_cpus, num_gpus=num_gpus)
        self.workers = [actor.remote(model, players, mode, reference, max_rows, batch, metric, device, threads)
                        for _ in range(workers)]
        self.tasks_per_worker = [0] * workers
        self._describe_workers(startup_timeout_s, num_cpus, num_gpus)

    def _describe_workers(self, timeout_s: float, num_cpus: float, num_gpus: float) -> None:
        ray = self._ray
        refs = [w.describe.remote() for w in self.workers]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if len(ready) < len(refs):
            self.close()
            raise DistributedError(
                f"only {len(ready)} of {len(refs)} Ray workers started within {timeout_s:.0f} s; each asks for "
                f"num_cpus={num_cpus}, num_gpus={num_gpus} and the cluster has {ray.cluster_resources()}. "
                "Lower workers/num_gpus or add nodes.")
        try:
            infos = ray.get(refs)  # re-raises a worker's load error (missing file, bad name) with its message
        except Exception:
            self.close()
            raise
        first = infos[0]
        for info in infos[1:]:
            if info["model_digest"] != first["model_digest"] or info["players"] != first["players"]:
                self.close()
                raise DistributedError(
                    f"Ray workers loaded different models: node {first['node']} has digest {first['model_digest']}, "
                    f"node {info['node']} has {info['model_digest']}; every node must hold the same checkpoint")
        self.players: list[str] = list(first["players"])
        self.model_source: str = first["source"]
        self.model_digest: str = first["model_digest"]
        self.devices = [info["device"] for info in infos]
        self._first_layer = np.asarray(first["first_layer"])
        self._n_layers = int(first["n_layers"])

    @property
    def n_players(self) -> int:
        return len(self.players)

    def fingerprint(self, task_name: str | None = None) -> dict:
        """The same dict probes.model_game.model_game builds for these inputs (stores interchange)."""
        return game_fingerprint(self.model_source, self.model_digest, task_name, self.batch, self.metric, self.mode,
                                self.sign, self.reference)

    @property
    def sign(self) -> float:
        return metric_sign(self.metric)

    def _engine_order(self, coalitions: np.ndarray) -> np.ndarray:
        """Row order of the engine's chunks, from the workers' first-layer table through the engine's
        own model-free plan (the driver never loads the model, so it holds no engine)."""
        first = first_ablated_layer(torch.from_numpy(~coalitions), torch.as_tensor(self._first_layer), self._n_layers)
        return chunk_order(first).numpy()

    def __call__(self, coalitions: np.ndarray,
                 on_result: Callable[[np.ndarray, np.ndarray], None] | None = None) -> np.ndarray:
        """Metric values (unsigned) of bool coalitions [m, n_players], in their order.

        on_result(rows, values) is called on the driver as each task comes back (rows index into
        `coalitions`), before the remaining tasks finish.
        """
        ray = self._ray
        coalitions = np.ascontiguousarray(coalitions, dtype=bool)
        if coalitions.ndim != 2 or coalitions.shape[1] != self.n_players:
            raise DistributedError(f"coalitions must be [m, {self.n_players}], got {coalitions.shape}")
        out = np.empty(len(coalitions))
        order = self._engine_order(coalitions)
        step = self.coalitions_per_task
        pending = deque(order[start:start + step] for start in range(0, len(order), step))
        in_flight: dict[Any, tuple[int, np.ndarray]] = {}

        def submit(worker: int) -> None:
            rows = pending.popleft()
            in_flight[self.workers[worker].evaluate.remote(coalitions[rows])] = (worker, rows)
            self.tasks_per_worker[worker] += 1

        # Two tasks queued per worker, so a worker has its next task while the driver handles a result.
        for _ in range(2):
            for worker in range(len(self.workers)):
                if pending:
                    submit(worker)
        while in_flight:
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            worker, rows = in_flight.pop(ref)
            values = np.asarray(ray.get(ref), dtype=float)
            out[rows] = values
            if on_result is not None:
                on_result(rows, values)
            if pending:
                submit(worker)
        return out

    def game(self, *, task_name: str | None = None, store=None, progress: Callable[[int], None] | None = None,
             batch_size: int | None = None) -> Game:
        """A Game whose value function runs on the workers and streams each task into `store`."""
        sign = self.sign
        game: Game | None = None
        block = np.zeros((0, self.n_players), dtype=bool)  # the coalitions of the call in progress

        def stream_to_store(rows: np.ndarray, raw: np.ndarray) -> None:
            values = sign * raw
            # Game.__call__ appends only after the whole block returns; appending each task here
            # keeps finished work on disk if the run dies midway. The store skips keys it holds,
            # so the Game's own append afterwards writes nothing twice. Non-finite values are left
            # for the Game to reject.
            if game.store is not None and np.isfinite(values).all():
                game.store.append([row.tobytes() for row in pack_coalitions(block[rows])], values)
            if progress is not None:
                progress(len(rows))

        def value_function(coalitions: np.ndarray) -> np.ndarray:
            nonlocal block
            block = np.ascontiguousarray(coalitions, dtype=bool)
            return sign * self(block, on_result=stream_to_store)

        # evaluator=self, so callers can close the workers: game.evaluator.close()
        game = Game(self.players, value_function, self.fingerprint(task_name), store=store, batch_size=batch_size,
                    evaluator=self)
        return game

    def close(self) -> None:
        """Stop the workers (they also stop when this object is garbage collected)."""
        for worker in getattr(self, "workers", []):
            self._ray.kill(worker)
        self.workers = []

    def __enter__(self) -> RayEvaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _workers_that_fit(ray, num_cpus: float, num_gpus: float) -> int:
    resources = ray.cluster_resources()
    if num_gpus > 0:
        return max(1, int(resources.get("GPU", 0) // num_gpus))
    return max(1, int(resources.get("CPU", 1) // max(num_cpus, 1e-9)))


def ray_model_game(model, batch, metric: Callable, players: str | Sequence = "heads", *, mode: str = "zero",
                   reference=None, task_name: str | None = None, max_rows: int = 64, store=None,
                   progress: Callable[[int], None] | None = None, workers: int | None = None,
                   address: str | None = None, num_cpus: float = 1, num_gpus: float = 0, device: str | None = None,
                   chunks_per_task: int = 1, batch_size: int | None = None, **evaluator_options) -> Game:
    """probes.model_game.model_game, evaluated on a Ray cluster; same fingerprint, same values.

    The extra arguments are RayEvaluator's (workers, address, num_cpus, num_gpus, device,
    chunks_per_task, ...). Stop the workers with `game.evaluator.close()` when done.
    """
    evaluator = RayEvaluator(model, batch, metric, players, mode=mode, reference=reference, max_rows=max_rows,
                             workers=workers, address=address, num_cpus=num_cpus, num_gpus=num_gpus, device=device,
                             chunks_per_task=chunks_per_task, **evaluator_options)
    return evaluator.game(task_name=task_name, store=store, progress=progress, batch_size=batch_size)
