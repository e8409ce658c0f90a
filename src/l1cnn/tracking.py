"""Optional MLflow tracking: a run's config, epochs, final metrics, model and report.

Only used when asked (``--mlflow URI`` or ``$MLFLOW_TRACKING_URI``); ``mlflow`` (the
``l1cnn[mlflow]`` extra, mlflow-skinny) is imported then and never otherwise. MLflow is a copy
for a team to look at, not the record: the run folder is. So every MLflow failure (a bad or
unreachable URI, a store that refuses a write) prints one ``warning:`` line, turns MLflow off for
the rest of the command, and never fails or loses the l1cnn run.

Two ways in: :class:`MlflowRun` follows ``train`` live (an epoch callback), and
:func:`log_runs` logs finished run folders as child runs of one parent (studies, searches,
cross-validation).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l1cnn import runs
from l1cnn.config import Config, config_to_dict
from l1cnn.errors import first_line
from l1cnn.loop import EpochCallback

TRACKING_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "l1cnn"
OFF = ("off", "none", "")
# MLflow retries an unreachable server 7 times with backoff (about 4 minutes) per request; a
# copy of the run should not hold training up that long. Set these to override.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# The run folder's files logged as artifacts (report.html is self-contained: figures inline).
ARTIFACTS = (
    runs.MODEL_FILE,
    "report.html",
    "report.md",
    runs.METRICS_FILE,
    runs.CONFIG_FILE,
    runs.RUN_FILE,
)
FINAL_SPLITS = ("train", "val", "test")
MAX_BATCH = 100  # params per log_batch call (MLflow's limit)

Warn = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class MlflowTarget:
    """Where to log: a tracking URI (``sqlite:///mlflow.db``, ``http://host:5000``, ...) and an
    experiment name."""

    uri: str
    experiment: str = DEFAULT_EXPERIMENT


def resolve_target(
    uri: str | None,
    experiment: str | None = None,
    environ: Mapping[str, str] | None = None,
    warn: Warn = _stderr,
) -> MlflowTarget | None:
    """The MLflow target of a command, or None: ``uri``, else ``$MLFLOW_TRACKING_URI``.

    ``uri`` "off" (or "none") turns tracking off even when the variable is set.

    Raises:
        ConfigError: ``uri`` given but mlflow is not installed (nothing has started yet).
    """
    import importlib.util

    from l1cnn.errors import ConfigError

    environ = os.environ if environ is None else environ
    given = uri is not None
    uri = uri if given else environ.get(TRACKING_ENV)
    if uri is None or uri.strip().lower() in OFF:
        return None
    if importlib.util.find_spec("mlflow") is None:
        message = "logging to MLflow needs mlflow: pip install 'l1cnn[mlflow]'"
        if given:
            raise ConfigError(f"--mlflow {uri}: {message}")
        warn(f"${TRACKING_ENV} is set but not used: {message}")
        return None
    experiment = experiment or environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
    return MlflowTarget(uri.strip(), experiment)


def flat_params(config: Config) -> dict[str, str]:
    """The resolved config as MLflow params: ``section.key`` -> value as text."""
    return {
        f"{section}.{key}": str(value)
        for section, values in config_to_dict(config).items()
        for key, value in values.items()
    }


def final_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """A run's ``metrics.json`` as MLflow metrics: ``test/accuracy``, ``val/roc_auc``, ..."""
    out: dict[str, float] = {}
    for split in FINAL_SPLITS:
        for name, value in metrics.get(split, {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{split}/{name}"] = float(value)
    threshold = metrics.get("threshold", {}).get("value")
    if isinstance(threshold, int | float):
        out["threshold"] = float(threshold)
    return out


def epoch_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """One history row's numbers (the epoch itself is the step)."""
    out = {}
    for name, value in row.items():
        if name == "epoch":
            continue
        try:
            out[name] = float(value)
        except (TypeError, ValueError):
            continue
    return out


class Mlflow:
    """A connection to one MLflow store that goes quiet after its first failure.

    Every call goes through :meth:`call`: the first exception prints one warning naming what
    was not logged and turns every later call into a no-op, so a store that went away costs
    at most one timeout, and the l1cnn command goes on.
    """

    def __init__(self, target: MlflowTarget, warn: Warn = _stderr) -> None:
        self.target, self.warn = target, warn
        self.client: Any = None
        self.experiment_id: str | None = None
        self.failed = False

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, or None (and MLflow off) if it raises."""
        if self.failed:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # any store, any error: the run must go on
            self.failed = True
            reason = first_line(exc)[:240]
            self.warn(
                f"MLflow ({self.target.uri}): {what} failed, so nothing more is logged there "
                f"(the run folder keeps everything): {reason}"
            )
            return None

    def connect(self) -> bool:
        """Open the store and find (or create) the experiment; False if that failed."""
        return self.call("opening the tracking store", self._connect) is not None

    def _connect(self) -> str:
        import logging

        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        for name in ("mlflow", "alembic"):  # schema creation is logged at INFO on first use
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=self.target.uri)
        found = self.client.get_experiment_by_name(self.target.experiment)
        if found is None:
            self.experiment_id = self.client.create_experiment(self.target.experiment)
        else:
            self.experiment_id = found.experiment_id
        return self.experiment_id

    def start_run(
        self, name: str, params: Mapping[str, str], tags: Mapping[str, str], parent: str | None
    ) -> str | None:
        """A new MLflow run with its params and tags; its id, or None."""

        def start() -> str:
            all_tags = dict(tags)
            if parent is not None:
                all_tags["mlflow.parentRunId"] = parent  # MLflow's nesting
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
            run_id = run_id.info.run_id
            self._log_params(run_id, params)
            return run_id

        if self.client is None and not self.connect():
            return None
        return self.call(f"starting the run {name}", start)

    def _log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), MAX_BATCH):
            self.client.log_batch(run_id, params=items[i : i + MAX_BATCH])

    def log_metrics(
        self, run_id: str | None, values: Mapping[str, float], step: int = 0, what: str = ""
    ) -> None:
        """Metrics at one step, in one request."""
        if run_id is None or not values:
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, step) for k, v in values.items()]
        self.call(what or f"metrics of step {step}", self.client.log_batch, run_id, metrics=metrics)

    def log_folder(self, run_id: str | None, run_dir: Path) -> None:
        """Final metrics (``metrics.json``), model and report of a run folder; tags its status."""
        if run_id is None:
            return
        metrics_file = run_dir / runs.METRICS_FILE
        if metrics_file.is_file():
            metrics = self.call("metrics.json", runs.read_json, metrics_file) or {}
            self.log_metrics(run_id, final_metrics(metrics), what="the final metrics")
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                self.call(f"{name}", self.client.log_artifact, run_id, str(run_dir / name))
        info_file = run_dir / runs.RUN_FILE
        status = (self.call("run.json", runs.read_json, info_file) or {}).get("status")
        if status:
            self.call("the status", self.client.set_tag, run_id, "l1cnn.status", status)

    def end_run(self, run_id: str | None, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED."""
        if run_id is not None:
            self.call("ending the run", self.client.set_terminated, run_id, status)


def run_tags(run_dir: Path, info: Mapping[str, Any]) -> dict[str, str]:
    """What ties an MLflow run to its run folder."""
    tags = {"l1cnn.run_dir": str(run_dir.resolve())}
    if info.get("source"):
        tags["l1cnn.source"] = str(info["source"])
    if info.get("command"):
        tags["l1cnn.command"] = " ".join(map(str, info["command"]))[:5000]
    return tags


class MlflowRun(EpochCallback):
    """``train``'s live MLflow run: params at the start, metrics every epoch, then the folder.

    A resumed run starts a new MLflow run that logs the epochs before the resume first, so
    each MLflow run holds a run's whole history. Epochs it did not see (a callback before it
    stopped training in ``on_epoch_end``) are logged from ``history.csv`` at the end, so its
    place in the callback list does not matter.
    """

    def __init__(
        self,
        target: MlflowTarget,
        config: Config,
        run_dir: Path,
        info: Mapping[str, Any],
        warn: Warn = _stderr,
    ) -> None:
        self.mlflow = Mlflow(target, warn)
        self.run_dir = run_dir
        self.last_epoch = 0  # the last epoch logged
        self.run_id = self.mlflow.start_run(
            run_dir.name, flat_params(config), run_tags(run_dir, info), parent=None
        )

    def on_train_begin(self, done: list[dict[str, float]]) -> None:
        for epoch, row in enumerate(done, start=1):  # a resumed run's epochs so far
            self.on_epoch_end(epoch, row)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any]) -> None:
        self.mlflow.log_metrics(self.run_id, epoch_metrics(logs), epoch)
        self.last_epoch = epoch

    def finish(self, failed: BaseException | None = None) -> None:
        """Log the run folder's results and end the MLflow run (FAILED/KILLED on an error)."""
        history = self.run_dir / runs.HISTORY_FILE
        if history.is_file() and not self.mlflow.failed:
            for row in self.mlflow.call("history.csv", runs.read_csv, history) or []:
                if int(float(row["epoch"])) > self.last_epoch:
                    self.on_epoch_end(int(float(row["epoch"])), row)
        self.mlflow.log_folder(self.run_id, self.run_dir)
        if failed is None:
            status = "FINISHED"
        else:
            status = "KILLED" if isinstance(failed, KeyboardInterrupt) else "FAILED"
        self.mlflow.end_run(self.run_id, status)


class TrainTracking:
    """``train``'s MLflow run as a context: a no-op without a target.

    ``start`` once the run folder's records exist; ``callbacks`` go into the epoch loop; on
    leaving, the run folder's results are logged and the MLflow run ends FINISHED, or FAILED
    (KILLED on Ctrl-C) when training raised. Nothing here ever raises into training.
    """

    def __init__(self, target: MlflowTarget | None, warn: Warn = _stderr) -> None:
        self.target, self.warn = target, warn
        self.run: MlflowRun | None = None

    def start(self, config: Config, run_dir: Path, info: Mapping[str, Any]) -> None:
        """Open the MLflow run (params, tags); a failure warns and leaves tracking off."""
        if self.target is not None:
            self.run = MlflowRun(self.target, config, run_dir, info, self.warn)

    @property
    def callbacks(self) -> list[EpochCallback]:
        """The epoch callback, or none."""
        return [self.run] if self.run is not None and self.run.run_id is not None else []

    def __enter__(self) -> TrainTracking:
        return self

    def __exit__(self, kind: Any, error: BaseException | None, _tb: Any) -> None:
        if self.run is not None and self.run.run_id is not None:
            self.run.finish(error)


def log_runs(
    target: MlflowTarget,
    name: str,
    run_dirs: Mapping[str, str | Path] | Iterable[str | Path],
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    artifacts: Iterable[str | Path] = (),
    warn: Warn = _stderr,
) -> str | None:
    """Log finished run folders as child runs of one new parent run (a study, search or CV).

    Each child gets its resolved config as params, its ``history.csv`` as per-epoch metrics,
    its final metrics, model and report as artifacts, exactly like a live ``train``.

    Args:
        target: where to log (:func:`resolve_target`).
        name: the parent run's name, e.g. the study folder's name.
        run_dirs: the run folders, or {child name: run folder} (default name: folder name).
        params: the parent's params (e.g. the preset, seeds, search space).
        metrics: the parent's metrics (e.g. the best trial's score, the CV mean).
        artifacts: files for the parent (e.g. results.csv, summary.md, study.html).
        warn: where the one warning line goes on a failure (default: stderr).

    Returns:
        The parent's MLflow run id, or None when MLflow failed (one warning said why).
    """
    folders = (
        {str(k): Path(v) for k, v in run_dirs.items()}
        if isinstance(run_dirs, Mapping)
        else {Path(p).name: Path(p) for p in run_dirs}
    )
    mlflow = Mlflow(target, warn)
    parent_params = {k: str(v) for k, v in (params or {}).items()}
    parent = mlflow.start_run(name, parent_params, {"l1cnn.children": str(len(folders))}, None)
    if parent is None:
        return None
    for child_name, run_dir in folders.items():
        info = mlflow.call(f"{run_dir / runs.RUN_FILE}", runs.read_json, run_dir / runs.RUN_FILE)
        config = mlflow.call(f"{run_dir}'s config", runs.read_run_config, run_dir)
        if info is None or config is None:
            break
        child = mlflow.start_run(
            child_name, flat_params(config), run_tags(run_dir, info), parent=parent
        )
        history = run_dir / runs.HISTORY_FILE
        rows = mlflow.call(f"{history}", runs.read_csv, history) if history.is_file() else []
        for epoch, row in enumerate(rows or [], start=1):
            mlflow.log_metrics(child, epoch_metrics(row), int(float(row.get("epoch", epoch))))
        mlflow.log_folder(child, run_dir)
        mlflow.end_run(child)
    mlflow.log_metrics(parent, dict(metrics or {}), what="the parent's metrics")
    for path in artifacts:
        if Path(path).is_file():
            mlflow.call(f"{path}", mlflow.client.log_artifact, parent, str(path))
    mlflow.end_run(parent)
    return None if mlflow.failed else parent
