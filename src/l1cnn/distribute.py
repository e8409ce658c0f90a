"""Data-parallel training on ``tf.distribute``: the cluster, the strategy, the step, who writes.

``train.strategy = "none"`` is today's single-process path and touches nothing here but
:class:`Single` (no TensorFlow call, so it stays bit-identical and no slower). ``mirrored``
runs one replica per local GPU (or logical CPU device); ``multi-worker`` runs
``MultiWorkerMirroredStrategy`` over the processes named by ``TF_CONFIG`` (or ``--workers``).

How a distributed step matches a single process (``train.batch_size`` is the global batch):

- every worker builds the same seeded shuffle of the same data and takes rows
  ``[n*w//W, n*(w+1)//W)`` of every global batch of ``n`` images; within a worker, local
  replica ``j`` of ``L`` takes rows ``[m*j//L, m*(j+1)//L)`` of the worker's ``m``;
- each replica's data loss is ``sum(w * bce) / n_global`` (``n_global`` all-reduced, so the
  last, shorter batch is right too) and the optimizer sums gradients over replicas: together
  the gradient of the mean over the global batch;
- the L1 penalty is added once per global step: every replica adds ``penalty / R`` (``R``
  replicas in sync), so the summed gradient holds ``d penalty`` exactly once;
- proximal L1 soft-thresholds the (mirrored) kernels once, after the step, in cross-replica
  context.

Only the chief writes the run folder; other workers train in a temporary copy that is
deleted at the end (:meth:`Distributed.run_folder`). Workers check they agree (config, data
fingerprint, l1cnn version, backup) before any weight is created, and a lost worker ends the
others through TensorFlow's coordination service (heartbeats) within ``collective_timeout``
seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from l1cnn.config import Config, dumps_config
from l1cnn.errors import ConfigError, DataError, L1CNNError, TrainingError
from l1cnn.version import __version__

DEFAULT_COLLECTIVE_TIMEOUT = 60.0
DEFAULT_JOIN_TIMEOUT = 600.0
# What a worker copies from the shared run folder to resume in its own temporary folder.
_RESUME_FILES = ("config.toml", "run.json", "data.json", "split.json", "backup.npz")
# What the workers compare before training; each digest travels as 3 x 16 bits in float32.
_AGREED = ("config", "data fingerprint", "l1cnn version", "backup")
_NO_DATA = 2.0  # status of a worker that could not load the data (1.0: ready)
_FAILED = 3.0  # status of a worker that stopped with another error before training


@dataclass(frozen=True)
class ClusterOptions:
    """How this process joins a cluster (command-line options, not part of the run's config).

    ``workers`` empty: the cluster comes from the ``TF_CONFIG`` environment variable.
    """

    workers: tuple[str, ...] = ()
    worker_index: int | None = None
    collective_timeout: float = DEFAULT_COLLECTIVE_TIMEOUT
    join_timeout: float = DEFAULT_JOIN_TIMEOUT


@dataclass(frozen=True)
class Cluster:
    """The workers of a multi-worker run, in replica order (chief first), and which one we are."""

    workers: tuple[str, ...]
    index: int

    @property
    def is_chief(self) -> bool:
        """Worker 0 (the ``chief`` task, or ``worker`` 0 when there is none) writes."""
        return self.index == 0

    def name(self, index: int) -> str:
        """``worker I (host:port)`` for messages."""
        return f"worker {index} ({self.workers[index]})"


_ADDRESS = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


def parse_workers(text: str) -> tuple[str, ...]:
    """``host:port,host:port,...`` -> the addresses; ConfigError names a malformed one."""
    workers = tuple(w.strip() for w in text.split(",") if w.strip())
    if not workers:
        raise ConfigError("--workers needs host:port,host:port,... (one per worker)")
    for address in workers:
        if not _ADDRESS.match(address):
            raise ConfigError(f"--workers: '{address}' is not host:port")
    if len(set(workers)) != len(workers):
        raise ConfigError("--workers names the same host:port twice")
    return workers


def tf_config(workers: tuple[str, ...], index: int) -> dict[str, Any]:
    """The ``TF_CONFIG`` of worker ``index`` in a cluster of ``workers``."""
    if not 0 <= index < len(workers):
        raise ConfigError(
            f"--worker-index must be in 0..{len(workers) - 1} for {len(workers)} workers, "
            f"got {index}"
        )
    return {"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": index}}


def cluster_from_tf_config(text: str | None) -> Cluster:
    """The cluster described by a ``TF_CONFIG`` value (chief and worker jobs only)."""
    if not text:
        raise ConfigError(
            "train.strategy multi-worker needs the cluster: set TF_CONFIG, or pass "
            "--workers host:port,host:port,... --worker-index I"
        )
    try:
        spec = json.loads(text)
        jobs = spec["cluster"]
        task_type, task_index = spec["task"]["type"], int(spec["task"]["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"TF_CONFIG is not valid ({exc!r}); see docs/distributed.md") from None
    unknown = sorted(set(jobs) - {"chief", "worker"})
    if unknown:
        raise ConfigError(f"TF_CONFIG: l1cnn trains with chief and worker tasks, not {unknown}")
    order = [("chief", i) for i in range(len(jobs.get("chief", [])))]
    order += [("worker", i) for i in range(len(jobs.get("worker", [])))]
    if (task_type, task_index) not in order:
        raise ConfigError(f"TF_CONFIG: task {task_type} {task_index} is not in the cluster")
    workers = tuple(jobs[t][i] for t, i in order)
    return Cluster(workers, order.index((task_type, task_index)))


def shard_rows(n: Any, part: Any, parts: Any) -> tuple[Any, Any]:
    """Rows ``[lo, hi)`` of part ``part`` of ``parts`` of ``n`` rows (ints or tensors).

    Contiguous and balanced (sizes differ by at most one), disjoint and complete.
    """
    return n * part // parts, n * (part + 1) // parts


def _digest(text: str) -> list[float]:
    """48 bits of sha256 as three float32-exact numbers (collectives carry floats)."""
    raw = hashlib.sha256(text.encode()).digest()
    return [float(int.from_bytes(raw[i : i + 2], "big")) for i in (0, 2, 4)]


def _file_digest(path: Path | None) -> str:
    if path is None or not path.is_file():
        return "none"
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Single:
    """``train.strategy = "none"``: one process, today's path, no TensorFlow call here."""

    is_chief = True
    num_replicas = 1

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        """Where the model and optimizer are built: nowhere special."""
        return contextlib.nullcontext()

    def agreed_data(self, load: Callable[[], Any], config: Config, backup: Path | None) -> Any:
        """The data (one process agrees with itself)."""
        return load()

    @contextlib.contextmanager
    def run_folder(self, run_dir: Path, resume: bool) -> Iterator[Path]:
        """The folder this process writes: the run folder itself."""
        yield run_dir

    def facts(self) -> dict[str, Any]:
        """What ``run.json`` records of the distribution: nothing for one process."""
        return {}

    def step_factory(self) -> Any:
        """The loop's own step (``l1cnn.loop.make_train_steps``)."""
        from l1cnn.loop import make_train_steps

        return make_train_steps

    def take_part(self, batches: Any) -> Any:
        """Training batches as they are."""
        return batches


def setup(strategy: str, options: ClusterOptions | None = None) -> Single | Distributed:
    """The strategy of ``train.strategy``; for ``multi-worker`` this joins the cluster.

    Must run before TensorFlow executes anything (collectives are configured at startup).

    Raises:
        ConfigError: no or a malformed cluster, or a worker did not join in time.
    """
    options = options or ClusterOptions()
    if strategy == "none":
        if options.workers:
            raise ConfigError("--workers needs --strategy multi-worker")
        return Single()
    if strategy == "mirrored":
        if options.workers:
            raise ConfigError("--workers needs --strategy multi-worker, not mirrored")
        return Distributed(_mirrored(), None, options)
    if strategy != "multi-worker":
        raise ConfigError(f"unknown train.strategy {strategy!r}")
    if options.workers:
        if options.worker_index is None:
            raise ConfigError("--workers needs --worker-index I (this worker's place in the list)")
        os.environ["TF_CONFIG"] = json.dumps(tf_config(options.workers, options.worker_index))
    elif options.worker_index is not None:
        raise ConfigError("--worker-index needs --workers host:port,host:port,...")
    cluster = cluster_from_tf_config(os.environ.get("TF_CONFIG"))
    watchdog = _join_watchdog(cluster, options)  # cancelled after the agreement check
    dist = Distributed(_multi_worker(cluster, options), cluster, options)
    dist.watchdog = watchdog
    return dist


def _mirrored() -> Any:
    """MirroredStrategy over every local GPU, else every logical CPU device."""
    import tensorflow as tf

    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices])


def _multi_worker(cluster: Cluster, options: ClusterOptions) -> Any:
    """MultiWorkerMirroredStrategy whose waits are bounded by our two timeouts.

    TensorFlow (2.13+) runs a coordination service led by the chief: every worker registers
    with it at start and then sends heartbeats; a worker silent for ``collective_timeout``
    seconds is declared lost and every collective is aborted, so the survivors' step fails
    instead of waiting forever. The strategy configures the service only when nobody has
    (TensorFlow's default: 10 s without heartbeats), so ours is set first, through
    TensorFlow's own (internal) context call, before the strategy is made. Registration is
    bounded by :class:`JoinWatchdog` (the service's registration timeout does not end it).
    """
    import tensorflow as tf
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    has_chief = _has_chief_job()
    jobs = [("chief", 1)] if has_chief else []
    jobs.append(("worker", len(cluster.workers) - len(jobs)))
    if context.context().coordination_service is None:
        context.context().configure_coordination_service(
            service_type="standalone",
            service_leader=f"/job:{jobs[0][0]}/replica:0/task:0",
            coordinated_jobs=[
                coordination_config_pb2.CoordinatedJob(name=name, num_tasks=n) for name, n in jobs
            ],
            heartbeat_timeout_in_ms=int(options.collective_timeout * 1000),
        )
    communication = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING
    )
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=communication)
    except ValueError as exc:  # e.g. a malformed address in TF_CONFIG
        raise ConfigError(f"cannot start multi-worker training: {exc}") from None


# The watchdog process: waits on its stdin; EOF (cancelled, or the worker died) ends it
# quietly, a timeout writes the error line and kills the worker.
_WATCHDOG = """
import os, select, signal, sys
pid, seconds = int(sys.argv[1]), float(sys.argv[2])
ready, _, _ = select.select([sys.stdin], [], [], seconds)
if not ready:
    os.write(2, (sys.argv[3] + chr(10)).encode())
    os.kill(pid, signal.SIGKILL)
"""


class JoinWatchdog:
    """Ends this process with one ``error:`` line if the cluster has not formed in time.

    Joining blocks inside TensorFlow's C++ runtime holding the GIL (measured with TF 2.21:
    ``ensure_initialized`` waits for every worker to register; the coordination service's
    registration timeout does not end it, SIGTERM does not either, and no Python thread
    runs meanwhile), so a tiny separate process keeps the time: it writes the error and
    sends SIGKILL (exit status 137). Cancelled once every worker has answered the first
    collective (the agreement check).
    """

    def __init__(self, seconds: float, message: str) -> None:
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _WATCHDOG, str(os.getpid()), str(seconds), message],
            stdin=subprocess.PIPE,
        )

    def cancel(self) -> None:
        """The cluster formed: end the watchdog."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
            self.proc.wait()


def _join_watchdog(cluster: Cluster, options: ClusterOptions) -> JoinWatchdog:
    others = ", ".join(cluster.name(i) for i in range(len(cluster.workers)) if i != cluster.index)
    return JoinWatchdog(
        options.join_timeout,
        f"error: not every worker joined within {options.join_timeout:g} s (--join-timeout); "
        "check "
        f"that {others} started the same command and can read the data; nothing trained",
    )


def _has_chief_job() -> bool:
    """Whether TF_CONFIG has a ``chief`` job (TFJob style) besides the workers."""
    try:
        return "chief" in json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except (ValueError, AttributeError):
        return False


# How TensorFlow names tasks in its errors: the coordination service says "tasks are unhealthy
# (stopped sending heartbeats): /job:worker/replica:0/task:1", a collective that lost its peer
# names the peer's device.
_TASK = re.compile(r"/job:(chief|worker)/(?:replica:\d+/)?task:(\d+)")


class Distributed:
    """A ``tf.distribute`` strategy with what the trainer needs of it."""

    def __init__(self, strategy: Any, cluster: Cluster | None, options: ClusterOptions) -> None:
        self.strategy, self.cluster, self.options = strategy, cluster, options
        self.num_replicas = int(strategy.num_replicas_in_sync)
        self.num_workers = len(cluster.workers) if cluster is not None else 1
        self.worker = cluster.index if cluster is not None else 0
        self.local_replicas = self.num_replicas // self.num_workers
        self.resume_hint = "l1cnn train --resume RUN"
        self.watchdog: JoinWatchdog | None = None

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run folder."""
        return self.cluster is None or self.cluster.is_chief

    def facts(self) -> dict[str, Any]:
        """What ``run.json`` records of the distribution (under ``distributed``)."""
        return {
            "distributed": {
                "strategy": "multi-worker" if self.cluster is not None else "mirrored",
                "workers": self.num_workers,
                "replicas": self.num_replicas,
            }
        }

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        """Build the model and optimizer in here: their variables become mirrored."""
        return self.strategy.scope()

    # ----------------------------------------------------------------- agreement before training

    def _exchange(self, row: list[float]) -> np.ndarray:
        """Every worker's ``row``, as a (workers, len(row)) table, through one all-reduce."""
        import tensorflow as tf

        table = np.zeros((self.num_workers, len(row)), np.float32)
        table[self.worker] = row
        local = self.local_replicas

        def mine() -> Any:  # the worker's first replica brings its row, the others zeros
            ctx = tf.distribute.get_replica_context()
            first = tf.equal(ctx.replica_id_in_sync_group % local, 0)
            return tf.where(first, tf.constant(table), tf.zeros_like(table))

        @tf.function  # eager strategy.run is slow and warns so under MultiWorkerMirrored
        def gather() -> Any:
            per_replica = self.strategy.run(mine)
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        return gather().numpy()

    def agreed_data(self, load: Callable[[], Any], config: Config, backup: Path | None) -> Any:
        """Load the data, then check every worker has the same config, data, version and backup.

        Runs before any weight exists, so a refusal trains nothing and writes nothing.

        Raises:
            DataError: this or another worker could not load the data.
            ConfigError: the workers disagree; the message names the first who does and on what.
        """
        if self.cluster is None:
            return load()
        try:
            dataset, failure = load(), None
        except L1CNNError as exc:  # still answer the others, so they need not time out
            dataset, failure = None, exc
        if dataset is None:
            status = _NO_DATA if isinstance(failure, DataError) else _FAILED
            row = [status] + [0.0] * (3 * len(_AGREED))
        else:
            texts = (dumps_config(config), dataset.fingerprint(), __version__, _file_digest(backup))
            row = [1.0] + [v for text in texts for v in _digest(text)]
        import tensorflow as tf

        try:
            table = self._exchange(row)  # every worker answered: the cluster has formed
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as exc:
            raise self.lost_worker(exc) from None
        if self.watchdog is not None:
            self.watchdog.cancel()
        if failure is not None:
            raise failure
        for index, other in enumerate(table):
            if other[0] == _NO_DATA:
                raise DataError(f"{self.cluster.name(index)} cannot read the data; nothing trained")
            if other[0] == _FAILED:
                raise ConfigError(
                    f"{self.cluster.name(index)} stopped with an error before training (see its "
                    "output); nothing trained"
                )
        for index, other in enumerate(table):
            for k, what in enumerate(_AGREED):
                digest = slice(1 + 3 * k, 4 + 3 * k)
                if not np.array_equal(other[digest], table[0][digest]):
                    raise ConfigError(
                        f"{self.cluster.name(index)} has a different {what} than "
                        f"{self.cluster.name(0)}; every worker must run the same command on "
                        "the same data with the same l1cnn; nothing trained"
                    )
        return dataset

    # ----------------------------------------------------------------- who writes

    @contextlib.contextmanager
    def run_folder(self, run_dir: Path, resume: bool) -> Iterator[Path]:
        """The folder this process writes: the chief the run folder, others a temporary copy.

        A non-chief worker trains exactly as the chief does (same records, same backup, so
        the code path is one) but into a temporary folder removed at the end; to resume, it
        starts from a copy of the shared run folder's records and backup.
        """
        self.resume_hint = self._resume_command(run_dir)
        if self.is_chief:
            yield run_dir
            return
        scratch = Path(tempfile.mkdtemp(prefix=f"l1cnn-worker{self.worker}-"))
        try:
            mine = scratch / "run"
            if resume:
                mine.mkdir()
                for name in _RESUME_FILES:
                    if (run_dir / name).is_file():
                        shutil.copy2(run_dir / name, mine / name)
            yield mine
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _resume_command(self, run_dir: Path) -> str:
        if self.cluster is None:
            return f"l1cnn train --resume {run_dir}"
        if self.options.workers:
            return (
                f"l1cnn train --resume {run_dir} --workers {','.join(self.options.workers)} "
                "--worker-index I"
            )
        return f"l1cnn train --resume {run_dir} (same TF_CONFIG)"

    # ----------------------------------------------------------------- the data and the step

    def take_part(self, batches: Any) -> Any:
        """This worker's rows of every global batch (all rows for one worker)."""
        if self.num_workers == 1:
            return batches
        worker, workers = self.worker, self.num_workers

        def part(x: Any, y: Any, w: Any) -> tuple[Any, Any, Any]:
            import tensorflow as tf

            lo, hi = shard_rows(tf.shape(y)[0], worker, workers)
            return x[lo:hi], y[lo:hi], w[lo:hi]

        return batches.map(part)

    def lost_worker(self, exc: Exception) -> TrainingError:
        """The one-line error of a step that failed because the cluster broke.

        Names the lost worker when TensorFlow's message names one task besides this one, or
        when there is only one other worker.
        """
        who = "a worker"
        if self.cluster is not None:
            chief_job = _has_chief_job()
            named = {
                int(task) + (1 if job == "worker" and chief_job else 0)
                for job, task in _TASK.findall(str(exc))
            }
            others = named - {self.cluster.index}
            if len(self.cluster.workers) == 2:
                others = {1 - self.cluster.index}
            if len(others) == 1 and 0 <= min(others) < len(self.cluster.workers):
                who = self.cluster.name(min(others))
        return TrainingError(
            f"{who} was lost, so training stopped (collective timeout "
            f"{self.options.collective_timeout:g} s); the run folder keeps every finished "
            f"epoch: restart every worker with `{self.resume_hint}`"
        )

    def step_factory(self) -> Any:
        """A ``loop.StepFactory`` running each step on every replica through ``strategy.run``."""
        return lambda model, optimizer, settings: self._make_steps(model, optimizer, settings)

    def _make_steps(self, model: Any, optimizer: Any, settings: Any) -> Any:
        """Like ``loop.make_train_steps`` (same signature and sums), one step per replica."""
        import tensorflow as tf

        from l1cnn import losses
        from l1cnn.loop import _step_settings

        strategy = self.strategy
        kernels, penalize, proximal, threshold = _step_settings(model, settings)
        replicas, local = self.num_replicas, self.local_replicas
        first = self.worker * local  # this worker's first replica id
        with strategy.scope():
            if not optimizer.built:
                optimizer.build(model.trainable_variables)

        def replica_step(x: Any, y: Any, w: Any) -> Any:
            ctx = tf.distribute.get_replica_context()
            lo, hi = shard_rows(tf.shape(y)[0], ctx.replica_id_in_sync_group - first, local)
            x, y, w = x[lo:hi], y[lo:hi], w[lo:hi]
            size = tf.cast(hi - lo, tf.float32)
            global_size = ctx.all_reduce(tf.distribute.ReduceOp.SUM, size)
            with tf.GradientTape() as tape:
                prob = model(x, training=True)
                fit_part = tf.reduce_sum(losses.per_example_loss(y, prob, w)) / global_size
                penalty = losses.l1_penalty(kernels, settings.l1_lambda)
                # The penalty once per global step: R replicas add 1/R of it each.
                objective = fit_part + penalty / replicas if penalize else fit_part
            grads = tape.gradient(objective, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            hit = tf.equal(tf.cast(tf.reshape(prob, [-1]) > 0.5, tf.float32), y)
            correct = tf.reduce_sum(tf.cast(hit, tf.float32))
            return tf.stack([fit_part, penalty / replicas, correct, size])

        @tf.function
        def run(iterator: Any, n: Any, sums: Any) -> tuple[Any, Any]:
            steps = tf.constant(0)
            for _ in tf.range(n):
                batch = iterator.get_next_as_optional()
                if not batch.has_value():
                    break
                x, y, w = batch.get_value()
                parts = strategy.run(replica_step, args=(x, y, w))
                fit_loss, penalty, correct, size = tf.unstack(
                    strategy.reduce(tf.distribute.ReduceOp.SUM, parts, axis=None)
                )
                if proximal:  # cross-replica: every copy of each kernel, once
                    amount = (
                        optimizer.learning_rate * settings.l1_lambda
                        if settings.scheduled_lr
                        else threshold
                    )
                    losses.soft_threshold(kernels, amount)
                size = tf.cast(size, tf.float64)
                sums += tf.stack(
                    [
                        tf.cast(fit_loss + penalty, tf.float64) * size,
                        tf.cast(fit_loss, tf.float64) * size,
                        tf.cast(penalty, tf.float64) * size,
                        tf.cast(correct, tf.float64),
                        size,
                    ]
                )
                steps += 1
            return sums, steps

        def guarded(iterator: Any, n: Any, sums: Any) -> tuple[Any, Any]:
            try:
                return run(iterator, n, sums)
            except (
                tf.errors.UnavailableError,
                tf.errors.DeadlineExceededError,
                tf.errors.CancelledError,
                tf.errors.AbortedError,
                tf.errors.FailedPreconditionError,
                tf.errors.InternalError,
            ) as exc:
                if self.cluster is None:
                    raise
                raise self.lost_worker(exc) from None

        return guarded
