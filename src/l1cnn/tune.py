"""``l1cnn tune``: search hyperparameters with Optuna; every trial is an ordinary run folder.

The search space (:mod:`l1cnn.tune_space`) maps config keys to ranges or choices; the
specified configuration is always enqueued first, so the result shows it beside the best one.
Each trial trains through :func:`l1cnn.train.train` with :class:`TrialPruning`, which reports
the validation objective to Optuna after every epoch and stops hopeless and collapsed trials
early (status ``pruned``, history kept). Trials live in an Optuna storage (SQLite in the output
folder by default, or any SQLAlchemy URL such as PostgreSQL), so rerunning the command, or
running it on several machines at once, shares one search; a heartbeat fails and retries the
trial of a worker that died. Optuna is imported only here, and this module only by ``tune``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import json
import math
import multiprocessing
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from l1cnn import runs
from l1cnn.callbacks import CollapseGuard
from l1cnn.config import Config, dumps_config
from l1cnn.errors import ConfigError, L1CNNError, RunError, TrainingError
from l1cnn.loop import EpochCallback, StopTraining
from l1cnn.tune_space import OBJECTIVES, Param, specified_params, trial_config

PRUNED = "pruned"  # run.json status of a trial stopped by the search
# A trial whose validation predictions are collapsed (constant or chance-level, the diagnosis
# of l1cnn.evaluate) this many epochs in a row is pruned: it is hopeless at any later epoch.
COLLAPSE_PATIENCE = 2
# Median pruning: after this many finished trials, from this epoch on (epoch 1 is too noisy).
PRUNER_STARTUP_TRIALS = 3
PRUNER_WARMUP_EPOCHS = 2
SAMPLER_STARTUP_TRIALS = 5  # random trials before TPE models the results
HEARTBEAT_S = 20  # a running trial silent for GRACE_FACTOR beats is failed and retried once
GRACE_FACTOR = 3
OPEN_ATTEMPTS = 4  # tries to open a storage (workers starting together race to make its tables)
READY_WAIT_S = 120  # how long a joining worker waits for the creator to set the study up
TUNE_FILE = "tune.json"
TRIALS_CSV = "trials.csv"
BEST_TOML = "best.toml"
TUNE_HTML = "tune.html"
STORAGE_DB = "tune.db"


class TrialPruning(EpochCallback):
    """Report the validation objective to the Optuna trial each epoch; prune when told to.

    A collapsed model (the guard's rule, :class:`l1cnn.callbacks.CollapseGuard`) is pruned
    after :data:`COLLAPSE_PATIENCE` epochs in a row, whatever the objectives. The median
    pruner's verdict applies to one objective only: Optuna cannot prune multi-objective trials.
    """

    def __init__(self, trial: Any, val_labels: np.ndarray, objective: str, report: bool) -> None:
        self.trial, self.objective, self.report = trial, objective, report
        self.labels = np.asarray(val_labels).reshape(-1)
        self.guard = CollapseGuard(self.labels, COLLAPSE_PATIENCE)
        self.auc: float | None = None

    def on_validation(self, epoch: int, val_prob: np.ndarray) -> None:
        self.guard.on_validation(epoch, val_prob)
        if self.objective == "val_roc_auc":
            from sklearn.metrics import roc_auc_score

            self.auc = float(roc_auc_score(self.labels, val_prob))

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.guard.wait >= self.guard.patience:
            raise StopTraining(
                PRUNED,
                f"pruned after epoch {epoch}: collapsed {self.guard.wait} epochs in a row "
                f"({'; '.join(self.guard.reasons)})",
            )
        if not self.report:
            return
        value = self.auc if self.objective == "val_roc_auc" else logs["val_data_loss"]
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise StopTraining(
                PRUNED,
                f"pruned after epoch {epoch}: {self.objective} {value:.4f} worse than the "
                "median of earlier trials at this epoch",
            )


# ------------------------------------------------------------------------------- the search


@dataclass
class TuneSettings:
    """What every worker of one search needs (plain values: sent to worker processes)."""

    source: str
    base: Config
    out: Path
    storage: str
    name: str
    objectives: list[str]
    space: list[Param]
    trials: int
    timeout: float | None = None
    heartbeat: float = HEARTBEAT_S
    command: list[str] = field(default_factory=list)


@dataclass
class TuneResult:
    """The search as stored: every trial's row, the specified, the best and the chosen one."""

    out: Path
    rows: list[dict[str, Any]]
    objectives: list[str]
    specified: dict[str, Any] | None
    chosen: dict[str, Any] | None  # best trial (one objective) or sparsest within `within`
    pareto: list[int]  # trial numbers on the Pareto front (two objectives)
    importances: dict[str, dict[str, float]]  # objective -> parameter -> importance
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row["state"]] = out.get(row["state"], 0) + 1
        return out


class _Surplus(Exception):
    """This worker's trial came after the planned number was reached by others."""


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("l1cnn tune needs Optuna: pip install 'l1cnn[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def redact(url: str) -> str:
    """The storage URL without its password (for pages and messages)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is reported by open_storage
        return url.split("@")[-1]


def open_storage(url: str, heartbeat: float) -> Any:
    """Optuna's RDB storage at ``url``, with a heartbeat; a clear RunError when unreachable.

    Workers that start together on an empty database race to create Optuna's tables; the
    loser's "duplicate" error goes away on a second try, so opening is tried a few times.
    """
    _optuna()  # the clear "install l1cnn[tune]" error first
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    for attempt in range(OPEN_ATTEMPTS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeat options are marked experimental
            try:
                return RDBStorage(
                    url,
                    heartbeat_interval=max(1, int(heartbeat)),
                    grace_period=max(2, int(heartbeat * GRACE_FACTOR)),
                    failed_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                    engine_kwargs={"pool_pre_ping": True},
                )
            except ImportError as exc:
                raise ConfigError(
                    f"storage '{redact(url)}' needs a database driver that is not installed "
                    f"({exc.name}): pip install 'l1cnn[tune]' has psycopg for PostgreSQL"
                ) from None
            except ValueError as exc:  # a malformed URL
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise RunError(f"cannot open storage '{redact(url)}': {reason}") from None
            except Exception as exc:  # noqa: BLE001 - SQLAlchemy's and Optuna's errors
                lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
                reason = lines[0] if lines else type(exc).__name__
                if attempt + 1 < OPEN_ATTEMPTS and "refused" not in reason:
                    time.sleep(1.0 + attempt)
                    continue
                raise RunError(f"cannot open storage '{redact(url)}': {reason}") from None
    raise AssertionError("unreachable")


def _sampler(settings: TuneSettings, worker: int) -> Any:
    optuna = _optuna()
    # TPE for one objective and for two (its multi-objective mode): it models the results after a
    # few random trials, where NSGA-II needs generations of ~50 trials; one seed per worker so
    # that workers starting together do not draw the same configuration.
    return optuna.samplers.TPESampler(
        n_startup_trials=SAMPLER_STARTUP_TRIALS, seed=settings.base.train.seed + worker
    )


def _pruner() -> Any:
    optuna = _optuna()
    # Median, not successive halving: our trials end early by early stopping and collapse, so
    # there is no fixed budget to halve; median needs only a few finished trials to start.
    return optuna.pruners.MedianPruner(
        n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_EPOCHS
    )


def _study_attrs(settings: TuneSettings, fingerprint: str) -> dict[str, Any]:
    """The study's record, as the storage gives it back (JSON: tuples become lists)."""
    attrs = {
        "source": settings.source,
        "fingerprint": fingerprint,
        "objectives": settings.objectives,
        "base_config": dumps_config(settings.base),
        "space": [dataclasses.asdict(p) for p in settings.space],
        "specified_params": specified_params(settings.space, settings.base),
    }
    return json.loads(json.dumps(attrs))


def open_study(settings: TuneSettings, fingerprint: str, worker: int = 0) -> Any:
    """Create the study (and enqueue the specified configuration) or join the existing one.

    Raises:
        RunError: the storage cannot be opened, or its study of this name searches other data,
            other objectives, another base configuration or another space.
    """
    optuna = _optuna()
    storage = open_storage(settings.storage, settings.heartbeat)
    directions = [OBJECTIVES[o][0] for o in settings.objectives]
    attrs = _study_attrs(settings, fingerprint)
    sampler, pruner = _sampler(settings, worker), _pruner()
    try:  # the database's unique study name makes exactly one worker the creator
        study = optuna.create_study(
            storage=storage,
            study_name=settings.name,
            directions=directions,
            sampler=sampler,
            pruner=pruner,
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(
            study_name=settings.name, storage=storage, sampler=sampler, pruner=pruner
        )
        _check_joined(study, settings, attrs)
        return study
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    study.enqueue_trial(attrs["specified_params"], user_attrs={"specified": True})
    study.set_user_attr("ready", True)
    return study


def _check_joined(study: Any, settings: TuneSettings, attrs: dict[str, Any]) -> None:
    """Wait for the creator to finish setting up, then refuse a study of something else."""
    waited = time.monotonic()
    while not study.user_attrs.get("ready"):
        if time.monotonic() - waited > READY_WAIT_S:
            raise RunError(
                f"study '{settings.name}' in '{redact(settings.storage)}' was never set up "
                "(its creator died?); use another --name"
            )
        time.sleep(0.5)
    mine = study.user_attrs
    where = f"study '{settings.name}' in '{redact(settings.storage)}'"
    if mine.get("fingerprint") != attrs["fingerprint"]:
        raise RunError(
            f"{where} searches other data ({mine.get('source')}), not '{settings.source}'; "
            "use another --name or --storage"
        )
    for key, what in (
        ("objectives", "objectives"),
        ("base_config", "base configuration"),
        ("space", "search space"),
    ):
        if mine.get(key) != attrs[key]:
            raise RunError(
                f"{where} was started with another {what}; rerun it with the same options, "
                "or use another --name"
            )


def _live(trials: list[Any]) -> list[Any]:
    """Trials that count towards the planned number: all but the failed ones."""
    from optuna.trial import TrialState

    return [t for t in trials if t.state != TrialState.FAIL]


def _objective(
    settings: TuneSettings,
    val_labels: np.ndarray,
    on_trial: Callable[[dict[str, Any]], None] | None,
) -> Callable[[Any], Any]:
    optuna = _optuna()
    from l1cnn.study import sparsity
    from l1cnn.train import train

    def objective(trial: Any) -> Any:
        # Numbers come from the storage in creation order: one more than planned is surplus.
        before = [
            t for t in _live(trial.study.get_trials(deepcopy=False)) if t.number < trial.number
        ]
        if len(before) >= settings.trials:
            trial.set_user_attr("surplus", True)
            raise _Surplus
        values = {p.key: p.suggest(trial) for p in settings.space}
        config = trial_config(settings.base, values)
        run_dir = settings.out / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("host", socket.gethostname())
        pruning = TrialPruning(
            trial, val_labels, settings.objectives[0], report=len(settings.objectives) == 1
        )
        _clear_session()
        command = [*settings.command, f"# tune trial {trial.number}"]
        started = time.perf_counter()
        try:
            result = train(
                settings.source,
                config,
                out=run_dir,
                overwrite=True,
                command=command,
                extra_callbacks=[pruning],
            )
        except TrainingError as exc:  # diverged: as hopeless as a pruned trial
            trial.set_user_attr("status", "diverged")
            trial.set_user_attr("message", str(exc))
            _progress(on_trial, trial, "diverged", time.perf_counter() - started)
            raise optuna.TrialPruned(str(exc)) from None
        if result.status == "interrupted":
            raise KeyboardInterrupt
        metrics = result.metrics
        message = str(runs.read_json(Path(result.run_dir) / runs.RUN_FILE).get("message") or "")
        model = runs.load_model_file(Path(result.run_dir) / runs.MODEL_FILE)
        zeros = sparsity(model)
        found = {
            "val_roc_auc": metrics["val"]["roc_auc"],
            "val_loss": metrics["val"]["loss"],
            "sparsity": zeros["exact_zero_all"],
        }
        attrs = {
            "status": result.status,
            "message": message,
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "val_roc_auc": found["val_roc_auc"],
            "val_loss": found["val_loss"],
            "val_accuracy": metrics["val"]["accuracy"],
            "sparsity": zeros["exact_zero_all"],
            "near_zero": zeros["near_zero_all"],
            "collapsed": bool(metrics["diagnosis"]["collapsed"]),
            # Kept for the chosen configuration's page only; the search never reads them.
            "test": {k: metrics["test"].get(k) for k in ("roc_auc", "accuracy", "f1", "loss")},
            "wall_time_s": round(result.wall_time_s, 2),
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, _plain(value))
        if result.status == PRUNED or attrs["collapsed"]:
            status = PRUNED if result.status == PRUNED else "collapsed"
            _progress(on_trial, trial, status, time.perf_counter() - started)
            raise optuna.TrialPruned(message or "the model collapsed")
        _progress(on_trial, trial, result.status, time.perf_counter() - started, found)
        return tuple(found[o] for o in settings.objectives)

    return objective


def _plain(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _progress(
    on_trial: Callable[[dict[str, Any]], None] | None,
    trial: Any,
    status: str,
    seconds: float,
    values: dict[str, float] | None = None,
) -> None:
    if on_trial is not None:
        on_trial(
            {"number": trial.number, "status": status, "seconds": seconds, "values": values or {}}
        )


def _clear_session() -> None:
    import keras
    import tensorflow as tf

    keras.backend.clear_session()  # a long search must not accumulate graphs
    tf.get_logger().setLevel("ERROR")  # each trial retraces: expected, not worth a warning


def work(
    settings: TuneSettings,
    worker: int = 0,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """One worker: train trials until the study holds ``settings.trials`` of them, or time is up.

    When the planned number is reached but other workers' trials still run, it waits for them,
    failing (and retrying once) any whose heartbeat stopped, so a dead worker leaves nothing
    hanging.
    """
    optuna = _optuna()
    from optuna.trial import TrialState

    dataset = _load(settings)
    study = open_study(settings, dataset.fingerprint(), worker)
    objective = _objective(settings, dataset.splits["val"].labels, on_trial)
    deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
    while deadline is None or time.monotonic() < deadline:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fail_stale_trials is marked experimental
            optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if waiting or len(_live(trials)) < settings.trials:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            with contextlib.suppress(_Surplus):
                study.optimize(objective, n_trials=1, timeout=left, catch=())
            continue
        if not any(t.state == TrialState.RUNNING for t in trials):
            return
        time.sleep(min(settings.heartbeat, 5))


def _load(settings: TuneSettings) -> Any:
    from l1cnn.data import load_data

    return load_data(settings.source, settings.base.data, settings.base.train.seed)


def _work_in_process(settings: TuneSettings, worker: int, threads: int, on_trial: Any) -> None:
    from l1cnn.study import limit_threads

    limit_threads(threads)
    work(settings, worker, on_trial)


def tune(
    settings: TuneSettings,
    jobs: int = 1,
    within: float = 0.01,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> TuneResult:
    """Run (or continue, or join) the search, then write its files into ``settings.out``.

    Args:
        settings: data, base configuration, storage, study name, objectives, space, trials.
        jobs: worker processes on this machine (each with ``cpus // jobs`` threads).
        within: two objectives: the chosen model is the sparsest whose first objective is
            within this of the best one.
        on_trial: called after each trial of this process (jobs=1: also of its workers) with
            ``number``, ``status``, ``seconds`` and ``values``; must be picklable for jobs > 1.

    Returns:
        A TuneResult (also written: trials.csv, best.toml, tune.json, tune.html).

    Raises:
        ConfigError, DataError, RunError: bad input, found before training.
    """
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if settings.trials < 0:
        raise ConfigError(f"--trials must be >= 0, got {settings.trials}")
    if within < 0:
        raise ConfigError(f"--within must be >= 0, got {within}")
    if not settings.storage.startswith("sqlite"):  # unreachable: fail before any folder
        open_storage(settings.storage, settings.heartbeat)
    fingerprint = _load(settings).fingerprint()  # bad data fails here too
    _open_out(settings)
    open_study(settings, fingerprint)  # another study under this name fails here
    if settings.trials == 0:
        pass  # only the files: the page can be written from any machine
    elif jobs == 1:
        work(settings, 0, on_trial)
    else:
        from l1cnn.study import cpu_count

        threads = max(1, cpu_count() // jobs)
        context = multiprocessing.get_context("spawn")  # a fresh TensorFlow per worker
        with cf.ProcessPoolExecutor(jobs, mp_context=context) as pool:
            futures = [
                pool.submit(_work_in_process, settings, w, threads, on_trial) for w in range(jobs)
            ]
            for future in cf.as_completed(futures):
                try:
                    future.result()
                except L1CNNError:
                    raise
                except cf.process.BrokenProcessPool:
                    raise RunError(
                        "a tune worker process died (out of memory?); rerun the same command "
                        "to continue the search"
                    ) from None
    return write_results(settings, within)


def _open_out(settings: TuneSettings) -> None:
    out = settings.out
    if out.exists() and not out.is_dir():
        raise RunError(f"tune folder '{out}' exists and is not a folder")
    if (out / TUNE_FILE).exists():
        try:
            before = runs.read_json(out / TUNE_FILE)
        except (OSError, ValueError):
            before = {}
        if before.get("name") not in (None, settings.name):
            raise RunError(
                f"tune folder '{out}' holds the search '{before['name']}', not "
                f"'{settings.name}'; use another --out"
            )
    try:
        (out / "trials").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"tune folder '{out}' cannot be created: {exc.strerror}") from None


# ---------------------------------------------------------------------------------- results


def trial_rows(study: Any, space: list[Param]) -> list[dict[str, Any]]:
    """One row per trial of the study (surplus ones left out), in trial order."""
    from optuna.trial import TrialState

    rows = []
    specified = study.user_attrs.get("specified_params")
    retried = {}  # failed trial number -> the number of its retry
    for t in study.get_trials(deepcopy=False):
        history = t.system_attrs.get("retry_history") or []
        if history:
            retried[history[-1]] = t.number
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if a.get("surplus"):
            continue
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name.lower(),
            "specified": bool(a.get("specified"))
            or (specified is not None and t.params == specified),
        }
        for p in space:
            value = t.params.get(p.name)
            if p.zero and t.params.get(p.zero_name):
                value = 0.0
            row[p.name] = value
        for name in ("val_roc_auc", "val_loss", "val_accuracy", "sparsity", "near_zero"):
            row[name] = a.get(name)
        for name in ("status", "epochs_run", "best_epoch", "wall_time_s", "run_dir", "host"):
            row[name] = a.get(name)
        row["message"] = a.get("message") or ""
        if t.state == TrialState.FAIL and t.number in retried:
            row["message"] = f"worker lost (no heartbeat); retried as trial {retried[t.number]}"
        elif t.state == TrialState.FAIL:
            row["message"] = row["message"] or "failed (worker lost or stopped)"
        row["test"] = a.get("test")
        rows.append(row)
    return rows


def _better(objective: str) -> float:
    """+1 when a larger value of ``objective`` is better, -1 when smaller is."""
    return 1.0 if OBJECTIVES[objective][0] == "maximize" else -1.0


def choose(rows: list[dict[str, Any]], objectives: list[str], within: float) -> dict | None:
    """The chosen finished trial: the best one, or (two objectives) the sparsest one whose first
    objective is within ``within`` of the best; ties go to the better first objective, then the
    earlier trial."""
    done = [r for r in rows if r["state"] == "complete" and r.get(objectives[0]) is not None]
    if not done:
        return None
    first, sign = objectives[0], _better(objectives[0])
    best = max(sign * r[first] for r in done)
    if len(objectives) == 1:
        return max(done, key=lambda r: (sign * r[first], -r["number"]))
    near = [r for r in done if sign * r[first] >= best - within - 1e-12]
    return max(near, key=lambda r: (r["sparsity"] or 0.0, sign * r[first], -r["number"]))


def _importances(study: Any, objectives: list[str]) -> dict[str, dict[str, float]]:
    """fANOVA importance of each parameter for each objective ({} with too few trials).

    fANOVA, not Optuna's default PED-ANOVA: it explains variance, so it needs no direction.
    """
    optuna = _optuna()
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(objectives):
        try:
            values = optuna.importance.get_param_importances(
                study,
                target=lambda t, i=i: t.values[i],
                evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
            )
        except (RuntimeError, ValueError, ZeroDivisionError):
            continue  # fewer than two finished trials, or a parameter that never varied
        out[name] = {k: float(v) for k, v in values.items()}
    return out


def row_config(base: Config, space: list[Param], row: dict[str, Any]) -> Config:
    """The configuration a trial's row trained (the base with the row's parameter values)."""
    return trial_config(base, {p.key: row[p.name] for p in space})


def write_results(settings: TuneSettings, within: float = 0.01) -> TuneResult:
    """Read the whole study back from its storage and write the search's files.

    Files in ``settings.out``: ``trials.csv`` (one row per trial), ``best.toml`` (the chosen
    configuration, for ``l1cnn train --config``), ``tune.json`` and ``tune.html``; HParams
    records in ``tensorboard/`` when the base configuration writes TensorBoard events.
    """
    optuna = _optuna()
    storage = open_storage(settings.storage, settings.heartbeat)
    study = optuna.load_study(study_name=settings.name, storage=storage)
    rows = trial_rows(study, settings.space)
    objectives = settings.objectives
    chosen = choose(rows, objectives, within)
    candidates = [r for r in rows if r["specified"] and r["state"] != "fail"]
    specified = candidates[0] if candidates else None
    finished = [r for r in rows if r["state"] == "complete"]
    pareto = [t.number for t in study.best_trials] if len(objectives) == 2 and finished else []
    importances = _importances(study, objectives) if len(finished) >= 3 else {}
    result = TuneResult(settings.out, rows, objectives, specified, chosen, pareto, importances)
    out = settings.out
    fields = [k for k in rows[0] if k != "test"] if rows else ["number", "state"]
    runs.write_csv(out / TRIALS_CSV, [{k: r[k] for k in fields} for r in rows], fields)
    result.files["trials"] = out / TRIALS_CSV
    if chosen is not None:
        text = dumps_config(row_config(settings.base, settings.space, chosen))
        header = f"# l1cnn tune: trial {chosen['number']} of study '{settings.name}'\n"
        runs.atomic_write_text(out / BEST_TOML, header + text)
        result.files["best"] = out / BEST_TOML
    meta = {
        "name": settings.name,
        "storage": redact(settings.storage),
        "source": settings.source,
        "objectives": objectives,
        "within": within,
        "planned": settings.trials,
        "space": [p.describe() for p in settings.space],
        "counts": result.counts,
        "epochs_total": sum(int(r["epochs_run"] or 0) for r in rows),
        "specified": specified["number"] if specified else None,
        "chosen": chosen["number"] if chosen else None,
        "pareto": pareto,
        "importances": importances,
        "command": settings.command,
        "versions": runs.library_versions(),
    }
    runs.write_json(out / TUNE_FILE, meta)
    result.files["json"] = out / TUNE_FILE
    from l1cnn.reporting.tune_report import write_tune_page

    result.files["page"] = write_tune_page(out / TUNE_HTML, rows, meta, settings.space)
    if settings.base.train.tensorboard and finished:
        result.files["hparams"] = _write_hparams(settings, rows)
    return result


def _write_hparams(settings: TuneSettings, rows: list[dict[str, Any]]) -> Path:
    """The HParams dashboard's records: one session per finished or pruned trial."""
    from l1cnn.tensorboard_log import TENSORBOARD_DIR, write_hparams

    base = settings.base
    records = [
        {
            "configuration": f"trial-{r['number']:04d}",
            "seed": base.train.seed,
            "l1_lambda": r.get("l1_lambda", base.model.l1_lambda),
            "l1_mode": r.get("l1_mode", base.model.l1_mode),
            "dropout_rate": r.get("dropout_rate", base.model.dropout_rate),
            "early_stopping": base.train.early_stopping,
            "val_loss": r["val_loss"],
            "exact_zero_all": r["sparsity"],
            "near_zero_all": r["near_zero"],
            "epochs_run": r["epochs_run"],
        }
        for r in rows
        if r["state"] in ("complete", "pruned") and r["val_loss"] is not None
    ]
    return write_hparams(settings.out / TENSORBOARD_DIR, records)
