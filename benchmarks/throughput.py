"""Training and inference speed of l1cnn against plain Keras, on the real X-ray data.

The reference is the specified network written the most direct way: NumPy arrays into
``model.fit`` (batch 32, RMSprop, EarlyStopping on val_loss), ``model.predict`` for inference.
Each variant runs in its own process (so peak RSS is its own), alternating ``--repeats`` times:
the reference with TensorFlow's default kernels (on AMD CPUs: oneDNN off), the reference with
oneDNN on (which l1cnn turns on), and l1cnn; medians are reported with the ratios. Because the
specified ``l1_lambda = 0.01`` makes both collapse, one more pair runs with ``l1_lambda = 0.001``
to check that both learn the same (test ROC-AUC within 0.02).

    python benchmarks/throughput.py [--repeats 3] [--max-epochs 100] [--out benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import machine, replace_section

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "pneumoniamnist_balanced.npz"
LATENCY_CALLS = 200
PREDICT_REPEATS = 5


def flops_per_image(height: int, width: int, channels: int) -> tuple[float, float]:
    """Forward and training (about 3x forward) FLOPs per image of the specified network."""
    h1, w1 = height - 2, width - 2
    conv1 = 2 * h1 * w1 * 9 * channels * 32
    h2, w2 = h1 - 2, w1 - 2
    conv2 = 2 * h2 * w2 * 9 * 32 * 64
    flat = (h2 // 2) * (w2 // 2) * 64
    dense = 2 * flat * 64 + 2 * 64
    forward = conv1 + conv2 + dense
    return float(forward), float(3 * forward)


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The machine's float32 matrix-product speed through TensorFlow (its own kernels)."""
    import tensorflow as tf

    a = tf.random.uniform((n, n))
    b = tf.random.uniform((n, n))
    tf.linalg.matmul(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tf.linalg.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _load() -> tuple:
    import numpy as np

    with np.load(DATA) as npz:
        return tuple(
            npz[k]
            for k in (
                "train_images",
                "train_labels",
                "val_images",
                "val_labels",
                "test_images",
                "test_labels",
            )
        )


def _latency(call, image) -> float:
    call(image)
    times = []
    for _ in range(LATENCY_CALLS):
        start = time.perf_counter()
        call(image)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def run_reference(max_epochs: int, l1_lambda: float) -> dict:
    """Plain Keras: the specified model, NumPy arrays into model.fit."""
    import keras
    from sklearn.metrics import roc_auc_score

    keras.utils.set_random_seed(42)
    xtr, ytr, xva, yva, xte, yte = _load()
    xtr, xva, xte = (x[..., None].astype("float32") / 255.0 for x in (xtr, xva, xte))
    reg = keras.regularizers.L1(l1_lambda)
    model = keras.Sequential(
        [
            keras.Input(xtr.shape[1:]),
            keras.layers.Conv2D(32, 3, activation="relu", kernel_regularizer=reg),
            keras.layers.Conv2D(64, 3, activation="relu", kernel_regularizer=reg),
            keras.layers.MaxPooling2D(2),
            keras.layers.Dropout(0.5),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu", kernel_regularizer=reg),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(1, activation="sigmoid", kernel_regularizer=reg),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.RMSprop(0.001), loss="binary_crossentropy", metrics=["accuracy"]
    )
    epoch_times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_times.append(time.perf_counter() - self.start)

    start = time.perf_counter()
    model.fit(
        xtr,
        ytr,
        batch_size=32,
        epochs=max_epochs,
        validation_data=(xva, yva),
        verbose=0,
        callbacks=[keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True), Timer()],
    )
    wall = time.perf_counter() - start
    model.predict(xte, batch_size=256, verbose=0)
    start = time.perf_counter()
    for _ in range(PREDICT_REPEATS):
        probs = model.predict(xte, batch_size=256, verbose=0)
    predict_s = (time.perf_counter() - start) / PREDICT_REPEATS
    latency = _latency(lambda x: model(x, training=False), xte[:1])
    return _result(
        len(xtr),
        epoch_times,
        wall,
        len(xte) / predict_s,
        latency,
        float(roc_auc_score(yte.reshape(-1), probs.reshape(-1))),
    )


def run_l1cnn(max_epochs: int, l1_lambda: float) -> dict:
    """l1cnn through its public API with the specified config and the same seed."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from l1cnn import load_config, load_run, train
    from l1cnn.loop import make_predict_fn
    from l1cnn.predict import predict_split, reload_run_data

    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"l1cnn-bench-{os.getpid()}"
    start = time.perf_counter()
    overrides = [f"epochs={max_epochs}", "seed=42", f"l1_lambda={l1_lambda}"]
    result = train(DATA, load_config(None, overrides), out=out, overwrite=True)
    wall = time.perf_counter() - start
    run = load_run(out)
    test = reload_run_data(run).splits["test"]
    predict_split(run.model, test)
    start = time.perf_counter()
    for _ in range(PREDICT_REPEATS):
        probs = predict_split(run.model, test)
    predict_s = (time.perf_counter() - start) / PREDICT_REPEATS
    forward = make_predict_fn(run.model)
    latency = _latency(forward, test.images[:1].astype(np.float32))
    epoch_times = [h["seconds"] for h in result.history]
    n_train = result.data["counts"]["train"]
    return _result(
        sum(n_train.values()),
        epoch_times,
        wall,
        len(test) / predict_s,
        latency,
        float(roc_auc_score(test.labels, probs)),
    )


def _result(
    n_train: int,
    epoch_times: list[float],
    wall: float,
    predict_ips: float,
    latency_ms: float,
    roc_auc: float,
) -> dict:
    steady = epoch_times[1:] or epoch_times  # the first epoch includes tracing/compilation
    return {
        "train_images_per_s": n_train / statistics.median(steady),
        "epochs": len(epoch_times),
        "time_to_stop_s": wall,
        "predict_images_per_s": predict_ips,
        "latency_ms": latency_ms,
        "test_roc_auc": roc_auc,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


VARIANTS = {  # name -> (function, TF_ENABLE_ONEDNN_OPTS in its environment; None: unset)
    "reference": ("reference", None),
    "reference+oneDNN": ("reference", "1"),
    "l1cnn": ("l1cnn", None),
}


def _child(variant: str, max_epochs: int, l1_lambda: float) -> dict:
    kind, onednn = VARIANTS[variant]
    args = ["--child", kind, "--max-epochs", str(max_epochs), "--l1-lambda", str(l1_lambda)]
    return _in_process(args, onednn, variant)


def _in_process(args: list[str], onednn: str | None, what: str) -> dict:
    """Run this script with ``args`` in a fresh process whose oneDNN setting is ``onednn``."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT / "src")}
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)  # each process gets exactly its own setting
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument("--child", choices=["reference", "l1cnn", "matmul"], help=argparse.SUPPRESS)
    parser.add_argument("--l1-lambda", type=float, default=0.01, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "matmul":
        print(json.dumps({"gflops": matmul_gflops()}))
        return
    if args.child:
        fn = run_reference if args.child == "reference" else run_l1cnn
        print(json.dumps(fn(args.max_epochs, args.l1_lambda)))
        return
    if not DATA.exists():
        raise SystemExit(f"benchmark data not found: {DATA}")

    import keras
    import tensorflow as tf

    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for i in range(args.repeats):
        for variant in VARIANTS:
            runs[variant].append(_child(variant, args.max_epochs, 0.01))
            print(f"repeat {i + 1}/{args.repeats} {variant}: {runs[variant][-1]}", flush=True)
    learning = {v: _child(v, args.max_epochs, 0.001) for v in ("reference", "l1cnn")}
    print(f"l1_lambda=0.001: {learning}", flush=True)
    med = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in runs.items()}
    # The ceiling is set by the kernels l1cnn runs with: oneDNN's (TF's defaults measured too).
    plain_gflops = _in_process(["--child", "matmul"], None, "matmul")["gflops"]
    gflops = _in_process(["--child", "matmul"], "1", "matmul with oneDNN")["gflops"]
    forward, training = flops_per_image(28, 28, 1)
    train_ceiling = gflops * 1e9 / training
    predict_ceiling = gflops * 1e9 / forward
    rows = [
        ("training images/s (epochs 2+)", "train_images_per_s", "{:.0f}"),
        ("epochs run", "epochs", "{:.0f}"),
        ("time to early stopping (s)", "time_to_stop_s", "{:.1f}"),
        ("inference images/s (test split)", "predict_images_per_s", "{:.0f}"),
        ("single-image latency (ms, median)", "latency_ms", "{:.2f}"),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("test ROC-AUC", "test_roc_auc", "{:.3f}"),
    ]
    lines = [
        "| measure | reference (plain Keras, TF defaults) | reference + oneDNN | l1cnn "
        "| l1cnn / reference | l1cnn / (reference + oneDNN) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, key, fmt in rows:
        ref, ref_dnn, ours = (med[v][key] for v in VARIANTS)
        cells = [fmt.format(x) for x in (ref, ref_dnn, ours)]
        ratios = [f"{ours / x:.2f}" if x else "-" for x in (ref, ref_dnn)]
        lines.append(f"| {label} | " + " | ".join(cells + ratios) + " |")
    learned = {v: learning[v]["test_roc_auc"] for v in learning}
    agree = abs(learned["reference"] - learned["l1cnn"]) <= 0.02
    table = "\n".join(lines)
    notes = (
        f"- matmul (TF float32 2048²): {gflops:.0f} GFLOP/s with oneDNN, {plain_gflops:.0f} "
        "with TF's default kernels on this CPU; per image "
        f"{forward / 1e6:.1f} MFLOP forward, {training / 1e6:.1f} MFLOP training → ceilings "
        f"{train_ceiling:.0f} train img/s, {predict_ceiling:.0f} inference img/s (oneDNN "
        "matmul speed); l1cnn uses "
        f"{med['l1cnn']['train_images_per_s'] / train_ceiling:.0%} (training) and "
        f"{med['l1cnn']['predict_images_per_s'] / predict_ceiling:.0%} (inference) of them.\n"
        f"- with the specified l1_lambda = 0.01 both collapse (test ROC-AUC about 0.5), so the "
        f"learning check runs once more with l1_lambda = 0.001: reference "
        f"{learned['reference']:.3f} after {learning['reference']['epochs']} epochs, l1cnn "
        f"{learned['l1cnn']:.3f} after {learning['l1cnn']['epochs']} epochs; within 0.02: "
        f"{'yes' if agree else 'NO'}.\n"
    )
    header = (
        f"## Throughput, {dt.date.today().isoformat()}\n\n"
        f"- machine: {machine()}; Python {platform.python_version()}, TensorFlow "
        f"{tf.__version__}, Keras {keras.__version__}\n"
        f"- command: `python benchmarks/throughput.py --repeats {args.repeats} --max-epochs "
        f"{args.max_epochs}`; data: `../shared/data/pneumoniamnist_balanced.npz`; the specified "
        f"config, seed 42; medians of {args.repeats} alternating runs, each in its own process. "
        "Inference: the 468 test images (reference: `model.predict(batch_size=256)`; l1cnn: "
        "`predict_split`, 512 per call), repeated 5 times.\n\n"
    )
    text = header + table + "\n\n" + notes
    print("\n" + text)
    replace_section(args.out, "## Throughput,", text)


if __name__ == "__main__":
    main()
