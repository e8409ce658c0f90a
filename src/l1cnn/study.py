"""``l1cnn study``: train a grid of configurations over several seeds and collect the results.

Each trial is an ordinary run folder (``OUT/trials/<configuration>/seed-<seed>``) written by
:func:`l1cnn.train.train`, so every trial of a seed shares the split. The study is resumable: a
trial whose folder holds a final status, ``metrics.json`` and the same model/train config is
kept; any other is trained again. Statistics and plots live in ``l1cnn.stats`` and
``l1cnn.reporting`` (no TensorFlow there).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l1cnn import reporting, runs
from l1cnn.config import Config, apply_overrides, config_from_dict, read_toml
from l1cnn.errors import ConfigError, L1CNNError, RunError, TrainingError

PRESETS = ("ablation", "l1-sweep", "dropout-sweep", "all")
L1_SWEEP = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 3e-2)
DROPOUT_SWEEP = (0.0, 0.25, 0.5, 0.7)
TRIALS_DIR = "trials"
RESULTS_FILE = "results.csv"
STUDY_FILE = "study.json"


@dataclass(frozen=True)
class GridEntry:
    """One configuration of the grid: a name and its ``key=value`` changes to the base config."""

    name: str
    overrides: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Trial:
    """One configuration at one seed, with its resolved config and run folder."""

    name: str
    seed: int
    config: Config
    run_dir: Path


@dataclass
class StudyResult:
    """What :func:`run_study` did; the rows are also in ``results.csv``."""

    out: Path
    rows: list[dict[str, Any]]
    reference: str
    planned: int = 0  # trials in the plan
    trained: list[str] = field(default_factory=list)  # "name/seed-N" trained in this call
    skipped: list[str] = field(default_factory=list)  # already finished, kept
    failed: list[str] = field(default_factory=list)  # diverged before any epoch: no results


def ablation_grid(base: Config) -> list[GridEntry]:
    """The 2x2x2 factorial of {L1, dropout, early stopping} on or off; all-on first."""
    grid = []
    for l1 in (True, False):
        for dropout in (True, False):
            for stop in (True, False):
                parts = [n for n, on in (("l1", l1), ("dropout", dropout), ("es", stop)) if on]
                grid.append(
                    GridEntry(
                        "-".join(parts) or "none",
                        (
                            ("l1_lambda", base.model.l1_lambda if l1 else 0.0),
                            ("dropout_rate", base.model.dropout_rate if dropout else 0.0),
                            ("early_stopping", stop),
                        ),
                    )
                )
    return grid


def preset_grid(preset: str, base: Config) -> list[GridEntry]:
    """The grid of a named preset, or of a TOML file listing ``[[trial]]`` tables.

    Args:
        preset: ``ablation``, ``l1-sweep``, ``dropout-sweep``, ``all`` or a path to a TOML file
            whose ``[[trial]]`` tables hold a ``name`` and config keys (``l1_lambda = 0.001``).
        base: the specified model (defaults, ``--config`` and ``--set``).

    Returns:
        The grid entries in order (duplicates are removed later, by resolved config).
    """
    if preset == "ablation":
        return ablation_grid(base)
    if preset == "l1-sweep":
        return [GridEntry(f"l1={v:g}", (("l1_lambda", v),)) for v in L1_SWEEP]
    if preset == "dropout-sweep":
        return [GridEntry(f"dropout={v:g}", (("dropout_rate", v),)) for v in DROPOUT_SWEEP]
    if preset == "all":
        return [g for p in ("ablation", "l1-sweep", "dropout-sweep") for g in preset_grid(p, base)]
    path = Path(preset)
    if path.suffix.lower() != ".toml":
        raise ConfigError(
            f"unknown preset '{preset}' (use one of {', '.join(PRESETS)}, "
            "or a .toml file of [[trial]] tables)"
        )
    raw = read_toml(path)
    tables = raw.get("trial")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"preset file '{path}' must hold one or more [[trial]] tables")
    grid = []
    for i, table in enumerate(tables, start=1):
        values = dict(table)
        name = values.pop("name", None)
        if not isinstance(name, str) or not name.strip() or "/" in name or name.startswith("."):
            raise ConfigError(f"preset file '{path}': trial {i} needs a name (a string, no '/')")
        grid.append(GridEntry(name.strip(), tuple(values.items())))
    return grid


def trial_config(base: Config, entry: GridEntry, fixed_epochs: int, seed: int) -> Config:
    """The config of one grid entry at one seed.

    Without early stopping a trial runs ``fixed_epochs`` epochs and keeps the last weights.
    """
    overrides = [f"{key}={json.dumps(value)}" for key, value in entry.overrides]
    try:
        config = config_from_dict(apply_overrides({}, overrides), base=base)
    except ConfigError as exc:
        raise ConfigError(f"trial '{entry.name}': {exc}") from None
    changes: dict[str, Any] = {"seed": seed}
    if not config.train.early_stopping:
        changes["epochs"] = fixed_epochs
    return config_from_dict({"train": changes}, base=config)


def plan_trials(
    base: Config, grid: list[GridEntry], n_seeds: int, fixed_epochs: int, out: Path
) -> tuple[list[Trial], str]:
    """Every (configuration, seed) trial, configurations deduplicated by their resolved config.

    The specified model (``base`` itself) is always included, as the reference.

    Returns:
        The trials (configuration-major) and the reference configuration's name.
    """
    if n_seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {n_seeds}")
    if fixed_epochs < 1:
        raise ConfigError(f"--epochs-without-early-stopping must be >= 1, got {fixed_epochs}")
    seeds = [base.train.seed + i for i in range(n_seeds)]
    # A trial is its whole config (seed aside): data (image size), model, train and augment.
    reference_key = (base.data, base.model, base.train, base.augment)
    names: dict[tuple[Any, ...], str] = {}
    for entry in grid:
        config = trial_config(base, entry, fixed_epochs, base.train.seed)
        key = (config.data, config.model, config.train, config.augment)
        if entry.name in names.values() and key not in names:
            raise ConfigError(f"two different trials are named '{entry.name}'")
        names.setdefault(key, entry.name)
    if reference_key not in names:
        names = {reference_key: "specified", **names}
    trials = []
    for (data_cfg, model, train_cfg, augment), name in names.items():
        config = config_from_dict(
            {}, base=Config(data=data_cfg, model=model, train=train_cfg, augment=augment)
        )
        for seed in seeds:
            config_seed = config_from_dict({"train": {"seed": seed}}, base=config)
            trials.append(Trial(name, seed, config_seed, out / TRIALS_DIR / name / f"seed-{seed}"))
    return trials, names[reference_key]


def is_finished(trial: Trial) -> bool:
    """True when the trial's folder holds a final status, metrics and the trial's own config."""
    run_dir = trial.run_dir
    try:
        info = runs.read_json(run_dir / runs.RUN_FILE)
        if info.get("status") not in runs.FINAL_STATUSES:
            return False
        if not (run_dir / runs.METRICS_FILE).exists() or not (run_dir / runs.MODEL_FILE).exists():
            return False
        saved = runs.read_run_config(run_dir)
    except (OSError, ValueError, L1CNNError):
        return False
    return (
        trial.config.data.image_size in (None, saved.data.image_size)  # saved: resolved
        and saved.model == trial.config.model
        and saved.train == trial.config.train
        and saved.augment == trial.config.augment
    )


def sparsity(model: Any) -> dict[str, float]:
    """Fractions of regularized kernel weights that are near zero and exactly 0.

    Args:
        model: a Keras model built by :func:`l1cnn.model.build_model`.

    Returns:
        ``near_zero_<layer>``, ``exact_zero_<layer>`` per Conv2D/Dense layer, then ``_all``
        over every regularized weight (near zero: |w| < :data:`l1cnn.model.NEAR_ZERO`).
    """
    from l1cnn.model import kernel_sparsity

    counts = kernel_sparsity(model)
    out: dict[str, float] = {}
    for c in counts:
        out[f"near_zero_{c.layer}"] = c.near_zero / c.weights
        out[f"exact_zero_{c.layer}"] = c.zeros / c.weights
    size_total = sum(c.weights for c in counts)
    out["near_zero_all"] = sum(c.near_zero for c in counts) / size_total
    out["exact_zero_all"] = sum(c.zeros for c in counts) / size_total
    return out


def augment_text(config: Config) -> str:
    """The augmentation of a config in short: ``"rotation=0.03 zoom=0.1"``, or ``"none"``."""
    import dataclasses

    default = type(config.augment)()
    changed = [
        f"{f.name}={getattr(config.augment, f.name)}".replace("=True", "")
        for f in dataclasses.fields(config.augment)
        if getattr(config.augment, f.name) != getattr(default, f.name)
    ]
    return " ".join(changed) or "none"


def trial_row(trial: Trial, out: Path) -> dict[str, Any]:
    """One row of ``results.csv``, read back from a finished trial's run folder."""
    run_dir = trial.run_dir
    info = runs.read_json(run_dir / runs.RUN_FILE)
    metrics = runs.read_json(run_dir / runs.METRICS_FILE)
    model_cfg, train_cfg = trial.config.model, trial.config.train
    row: dict[str, Any] = {
        "configuration": trial.name,
        "l1_lambda": model_cfg.l1_lambda,
        "l1_mode": model_cfg.l1_mode,
        "dropout_rate": model_cfg.dropout_rate,
        "early_stopping": train_cfg.early_stopping,
        "epochs": train_cfg.epochs,
        "image_size": runs.read_run_config(run_dir).data.image_size,  # resolved
        "lr_schedule": train_cfg.lr_schedule,
        "sampling": train_cfg.sampling,
        "augment": augment_text(trial.config),
        "seed": trial.seed,
        "status": info.get("status"),
        "epochs_run": info.get("epochs_run"),
        "best_epoch": info.get("best_epoch"),
    }
    for split in ("train", "val", "test"):
        row[f"{split}_loss"] = metrics[split]["loss"]
        row[f"{split}_accuracy"] = metrics[split]["accuracy"]
    row["test_roc_auc"] = metrics["test"]["roc_auc"]
    row["test_f1"] = metrics["test"]["f1"]
    # metrics' loss is the log loss of the predictions: the data part, without the L1 penalty.
    row["gap_accuracy"] = metrics["train"]["accuracy"] - metrics["test"]["accuracy"]
    row["gap_loss"] = metrics["test"]["loss"] - metrics["train"]["loss"]
    row["collapsed"] = bool(metrics.get("diagnosis", {}).get("collapsed", False))
    row.update(sparsity(runs.load_model_file(run_dir / runs.MODEL_FILE)))
    row["wall_time_s"] = info.get("wall_time_s")
    row["run_dir"] = str(run_dir.relative_to(out)) if run_dir.is_relative_to(out) else str(run_dir)
    return row


def results_fields(rows: list[dict[str, Any]]) -> list[str]:
    """Column order of ``results.csv``: the first row's keys, then any others in order met."""
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    return fields


def limit_threads(threads: int) -> None:
    """Limit TensorFlow to ``threads`` intra-op threads and one inter-op thread in this process.

    Must run before TensorFlow starts its runtime; a process that already started keeps its
    settings (the call is then ignored).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # the runtime is already initialized (e.g. TF used earlier in this process)


def _run_one(source: str, config: Config, run_dir: str, command: list[str]) -> tuple[str, float]:
    """Train one trial (in this process or a worker); return its final status and seconds."""
    import keras

    from l1cnn.train import train

    keras.backend.clear_session()  # a long study must not accumulate graphs
    # Each trial compiles its own step and predict functions, so TensorFlow's "retracing"
    # warning is expected here and would only bury the progress lines.
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    started = time.perf_counter()
    try:
        status = train(source, config, out=run_dir, overwrite=True, command=command).status
    except TrainingError:
        try:
            status = str(runs.read_json(Path(run_dir) / runs.RUN_FILE).get("status", "diverged"))
        except (OSError, ValueError):
            status = "diverged"
    return status, time.perf_counter() - started


def cpu_count() -> int:
    """CPUs this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def open_results_folder(
    out: Path,
    source: str | Path,
    fingerprint: str,
    record: str = STUDY_FILE,
    runs_dir: str = TRIALS_DIR,
    what: str = "study",
    holds: str = "a study",
) -> None:
    """Make ``out/<runs_dir>``; refuse a file there, or a folder whose ``record`` names other
    data (a study's trials, a cross-validation's folds: rerunning continues only the same)."""
    if out.exists() and not out.is_dir():
        raise RunError(f"{what} folder '{out}' exists and is not a folder")
    if (out / record).exists():
        try:
            before = runs.read_json(out / record).get("fingerprint")
        except (OSError, ValueError):
            before = None
        if before is not None and before != fingerprint:
            raise RunError(
                f"{what} folder '{out}' holds {holds} of other data than '{source}'; "
                "use another --out"
            )
    try:
        (out / runs_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"{what} folder '{out}' cannot be created: {exc.strerror}") from None


def run_study(
    source: str | Path,
    base: Config,
    out: str | Path,
    preset: str = "ablation",
    n_seeds: int = 5,
    jobs: int = 1,
    fixed_epochs: int = 40,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    train_missing: bool = True,
    command: list[str] | None = None,
) -> StudyResult:
    """Run (or resume) a study and write ``results.csv``, ``study.json`` and the report.

    Args:
        source: the data, as for :func:`l1cnn.train.train`.
        base: the specified model; every trial changes only its grid keys (and seed, epochs).
        out: the study folder; trials go to ``out/trials/<configuration>/seed-<seed>``.
        preset: a name from :data:`PRESETS` or a TOML file of ``[[trial]]`` tables.
        n_seeds: seeds ``train.seed``, ``train.seed + 1``, ...
        jobs: trials trained at once, each in its own process with ``cpus // jobs`` threads.
        fixed_epochs: epochs of the trials without early stopping (last weights kept).
        on_progress: called once before training with ``done``, ``total`` and ``trial=None``,
            then after each trained trial with ``done``, ``total``, ``trial``, ``seed``,
            ``status``, ``seconds`` and ``eta_s`` (seconds left, estimated).
        train_missing: False writes the report from finished trials only, training nothing.
        command: the command line, recorded in each run and in ``study.json``.

    Returns:
        A StudyResult.

    Raises:
        ConfigError, DataError, RunError: bad input, found before training.
        KeyboardInterrupt: the user stopped the study (finished trials are kept and
            summarized).
    """
    from l1cnn.data import load_data

    out = Path(out)
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    grid = preset_grid(preset, base)
    trials, reference = plan_trials(base, grid, n_seeds, fixed_epochs, out)
    # Fail on bad data before any folder is made; the fingerprint ties the folder to its data.
    fingerprint = load_data(source, base.data, base.train.seed).fingerprint()
    open_results_folder(out, source, fingerprint)
    runs.write_json(
        out / STUDY_FILE,
        {
            "source": str(source),
            "fingerprint": fingerprint,
            "preset": preset,
            "seeds": n_seeds,
            "jobs": jobs,
            "epochs_without_early_stopping": fixed_epochs,
            "reference": reference,
            "configurations": list(dict.fromkeys(t.name for t in trials)),
            "command": command,
            "versions": runs.library_versions(),
        },
    )
    todo = [t for t in trials if not is_finished(t)]
    result = StudyResult(out, [], reference, planned=len(trials))
    result.skipped = [f"{t.name}/seed-{t.seed}" for t in trials if t not in todo]
    if train_missing and todo:
        if on_progress is not None:
            on_progress({"done": len(trials) - len(todo), "total": len(trials), "trial": None})
        try:
            train_trials(str(source), todo, jobs, result, on_progress, len(trials), command or [])
        except KeyboardInterrupt:
            # Keep what finished: the report of the finished trials, then stop as asked.
            result.rows = collect_rows(trials, out, result)
            write_study_report(out, trials, result, preset, fixed_epochs)
            raise
    result.rows = collect_rows(trials, out, result)
    write_study_report(out, trials, result, preset, fixed_epochs)
    return result


def write_study_report(
    out: Path, trials: list[Trial], result: StudyResult, preset: str, fixed_epochs: int
) -> list[Path]:
    """Write ``summary.md``, ``study.html`` and plots from the finished trials' rows."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for trial in trials:
        history = trial.run_dir / runs.HISTORY_FILE
        if trial.name not in curves and is_finished(trial) and history.exists():
            curves[trial.name] = runs.read_csv(history)
    meta = {
        "source": runs.read_json(out / STUDY_FILE).get("source"),
        "preset": preset,
        "seed_list": sorted({t.seed for t in trials}),
        "epochs_without_early_stopping": fixed_epochs,
        "finished": len(result.rows),
        "planned": len(trials),
    }
    written = reporting.write_study_report(out, result.rows, result.reference, curves, meta)
    if trials and trials[0].config.train.tensorboard:  # HParams dashboard: trials side by side
        from l1cnn.tensorboard_log import TENSORBOARD_DIR, write_hparams

        write_hparams(out / TENSORBOARD_DIR, result.rows)
    return written


def collect_rows(trials: list[Trial], out: Path, result: StudyResult) -> list[dict[str, Any]]:
    """Rows of every finished trial, written to ``results.csv`` (unfinished ones left out)."""
    rows = []
    for trial in trials:
        if is_finished(trial):
            rows.append(trial_row(trial, out))
        elif f"{trial.name}/seed-{trial.seed}" in result.trained:
            result.failed.append(f"{trial.name}/seed-{trial.seed}")
    if rows:
        runs.write_csv(out / RESULTS_FILE, rows, results_fields(rows))
    return rows


def train_trials(
    source: str,
    todo: list[Trial],
    jobs: int,
    result: StudyResult,
    on_progress: Callable[[dict[str, Any]], None] | None,
    total: int,
    command: list[str],
) -> None:
    """Train ``todo``, in this process (jobs=1) or in ``jobs`` spawned worker processes."""
    started = time.perf_counter()
    done_before = total - len(todo)

    def finished(trial: Trial, status: str, seconds: float) -> None:
        result.trained.append(f"{trial.name}/seed-{trial.seed}")
        if status == "interrupted":
            raise KeyboardInterrupt
        if on_progress is not None:
            n_done = len(result.trained)
            per_trial = (time.perf_counter() - started) / n_done
            on_progress(
                {
                    "done": done_before + n_done,
                    "total": total,
                    "trial": trial.name,
                    "seed": trial.seed,
                    "status": status,
                    "seconds": seconds,
                    "eta_s": per_trial * (len(todo) - n_done),
                }
            )

    def cmd(trial: Trial) -> list[str]:
        return [*command, f"# trial {trial.name} seed {trial.seed}"]

    if jobs == 1:
        for trial in todo:
            finished(trial, *_run_one(source, trial.config, str(trial.run_dir), cmd(trial)))
        return
    threads = max(1, cpu_count() // jobs)
    context = multiprocessing.get_context("spawn")  # a fresh TensorFlow per worker
    with cf.ProcessPoolExecutor(
        jobs, mp_context=context, initializer=limit_threads, initargs=(threads,)
    ) as pool:
        futures = {
            pool.submit(_run_one, source, trial.config, str(trial.run_dir), cmd(trial)): trial
            for trial in todo
        }
        try:
            for future in cf.as_completed(futures):
                try:
                    status, seconds = future.result()
                except L1CNNError:
                    raise
                except cf.process.BrokenProcessPool:
                    raise RunError(
                        "a study worker process died (out of memory?); rerun the "
                        "same command to resume"
                    ) from None
                finished(futures[future], status, seconds)
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def format_eta(seconds: float) -> str:
    """``'2 h 05 min'``, ``'7 min'`` or ``'40 s'``: a rough time left."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds} s"
