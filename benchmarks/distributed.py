"""What data-parallel training costs on this machine, and a scaling model for real clusters.

Measured, each variant in its own process(es), on the real X-ray data (specified network,
batch 32, early stopping off, ``--epochs`` epochs; the median epoch after the first):

- ``none``: one process, both cores (TensorFlow's own threads);
- ``2 workers``: ``--strategy multi-worker`` with two processes on loopback, each pinned to
  one core with ``taskset`` (so together the same two cores);
- ``mirrored``: one process, the CPU split into 2 logical devices;
- the all-reduce alone: two pinned processes all-reduce a float32 tensor of the model's size
  (what the optimizer sums every step), timed over ``--reduces`` calls.

This box has 2 cores, so it cannot show a speed-up: it shows the overhead. The scaling model
(``model`` rows, not measurements) uses the measured compute per image and the all-reduce
volume: ring all-reduce moves 2(W-1)/W x S bytes per worker per step.

    python benchmarks/distributed.py [--epochs 3] [--reduces 50] [--out benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import machine, replace_section

ROOT = Path(__file__).resolve().parents[1]
# The shared data beside the checkout (a worktree sits one level deeper).
DATA = next(
    (
        p / "shared" / "data" / "pneumoniamnist_balanced.npz"
        for p in (ROOT.parent, ROOT.parent.parent)
        if (p / "shared" / "data" / "pneumoniamnist_balanced.npz").is_file()
    ),
    ROOT.parent / "shared" / "data" / "pneumoniamnist_balanced.npz",
)
COMMON = ["--batch-size", "32", "--set", "train.early_stopping=false", "--quiet"]
COMMON += ["--set", "train.tensorboard=false"]
MIRRORED = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from l1cnn.cli import main
sys.exit(main(sys.argv[1:]))
"""
# One all-reduce worker: sums a float32 vector of N values with the other, --reduces times.
ALLREDUCE = """
import json, os, sys, time
import tensorflow as tf
n, calls = int(sys.argv[1]), int(sys.argv[2])
strategy = tf.distribute.MultiWorkerMirroredStrategy()
value = tf.ones([n], tf.float32)

@tf.function
def reduce():  # what the optimizer does with the gradients each step
    sum_ = tf.distribute.ReduceOp.SUM
    return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(sum_, value))

reduce()  # trace and warm up
times = []
for _ in range(calls):
    start = time.perf_counter()
    reduce().numpy()
    times.append(time.perf_counter() - start)
times.sort()
print(json.dumps({"median_s": times[len(times) // 2], "min_s": times[0]}))
"""
GBITS = (1, 10, 25)
WORKERS = (2, 4, 8, 16)
LATENCY_S = 50e-6  # per ring hop: an assumption for a datacenter network, not measured here


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    return env


def _epoch_seconds(run: Path) -> list[float]:
    with (run / "history.csv").open() as f:
        return [float(row["seconds"]) for row in csv.DictReader(f)]


def _train(args: list[str], out: Path) -> None:
    cmd = [sys.executable, "-m", "l1cnn.cli", "train", *args, "--out", str(out)]
    subprocess.run(cmd, env=_env(), check=True, capture_output=True, text=True)


def _workers(args: list[str], out: Path) -> None:
    workers = ",".join(f"localhost:{p}" for p in _ports(2))
    procs = []
    for index in (1, 0):
        cmd = ["taskset", "-c", str(index), sys.executable, "-m", "l1cnn.cli", "train", *args]
        cmd += ["--strategy", "multi-worker", "--workers", workers, "--worker-index", str(index)]
        cmd += ["--out", str(out)]
        procs.append(subprocess.Popen(cmd, env=_env(), stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"a worker failed: {err[-2000:]}")


def _allreduce(n: int, calls: int) -> dict[str, float]:
    workers = [f"localhost:{p}" for p in _ports(2)]
    procs = []
    for index in (1, 0):
        env = _env()
        env["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        )
        cmd = ["taskset", "-c", str(index), sys.executable, "-c", ALLREDUCE, str(n), str(calls)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    outs = [proc.communicate(timeout=600)[0] for proc in procs]
    return json.loads(outs[-1].strip().splitlines()[-1])  # the chief's


def _weights(run: Path) -> int:
    import keras

    model = keras.saving.load_model(run / "model.keras", compile=False)
    return int(sum(w.size for w in model.get_weights()))


def scaling_model(
    per_image_s: float, nbytes: int, batch: int, per_worker: bool = False
) -> list[dict[str, float]]:
    """Modelled step time, throughput and efficiency for W workers at each bandwidth.

    One worker = this machine (2 cores); compute per step = (global batch / W) * per_image_s;
    ring all-reduce = 2 (W-1)/W * bytes / bandwidth + 2 (W-1) * LATENCY_S. The global batch
    is ``batch`` (strong scaling) or ``batch * W`` with ``per_worker`` (weak scaling: each
    worker keeps ``batch`` images). ``batch_even`` is the global batch at which compute
    equals communication (larger: compute dominates). Speed-up is against one worker.
    """
    rows = []
    for gbit in GBITS:
        bandwidth = gbit * 1e9 / 8
        for w in WORKERS:
            comm = 2 * (w - 1) / w * nbytes / bandwidth + 2 * (w - 1) * LATENCY_S
            global_batch = batch * w if per_worker else batch
            compute = global_batch / w * per_image_s
            step = compute + comm
            rows.append(
                {
                    "gbit": gbit,
                    "workers": w,
                    "batch": global_batch,
                    "comm_ms": comm * 1e3,
                    "compute_ms": compute * 1e3,
                    "images_per_s": global_batch / step,
                    "speedup": (global_batch / step) * per_image_s,
                    "efficiency": compute / step,
                    "batch_even": w * comm / per_image_s,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--reduces", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    opts = parser.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"needs the shared data at {DATA}")
    args = [str(DATA), *COMMON, "--epochs", str(opts.epochs)]
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _train(args, root / "none")
        _workers(args, root / "workers")
        subprocess.run(
            [sys.executable, "-c", MIRRORED, "train", *args, "--strategy", "mirrored",
             "--out", str(root / "mirrored")],
            env=_env(), check=True, capture_output=True, text=True,
        )  # fmt: skip
        info = json.loads((root / "none" / "data.json").read_text())
        n_train = sum(info["counts"]["train"].values())
        for name in ("none", "workers", "mirrored"):
            seconds = _epoch_seconds(root / name)
            results[name] = statistics.median(seconds[1:] or seconds)
        n_weights = _weights(root / "none")
    reduce = _allreduce(n_weights, opts.reduces)
    steps = -(-n_train // 32)
    step_none = results["none"] / steps
    nbytes = 4 * n_weights
    per_image = step_none / 32
    date = dt.date.today().isoformat()
    lines = [
        f"## Distributed training, {date}",
        "",
        f"Machine: {machine()}; shared with other jobs while measured (under load).",
        f"Command: `python benchmarks/distributed.py --epochs {opts.epochs} "
        f"--reduces {opts.reduces}`",
        f"Data: {DATA.name}, {n_train} training images, batch 32 ({steps} steps per epoch), "
        f"the specified network ({n_weights:,} weights, {nbytes / 1e6:.2f} MB all-reduced per "
        "step). Epoch time is the median after the first and includes validation.",
        "",
        "| variant | epoch s | images/s | ms per step | vs one process |",
        "|---|---|---|---|---|",
    ]
    for name, label in (
        ("none", "1 process, 2 threads (`--strategy none`)"),
        ("workers", "2 workers x 1 core (`taskset`, `--strategy multi-worker`)"),
        ("mirrored", "1 process, 2 logical devices (`--strategy mirrored`)"),
    ):
        sec = results[name]
        lines.append(
            f"| {label} | {sec:.2f} | {n_train / sec:.0f} | {sec / steps * 1e3:.1f} | "
            f"{results['none'] / sec:.2f}x |"
        )
    lines += [
        "",
        f"All-reduce of {nbytes / 1e6:.2f} MB between the two pinned workers on loopback: "
        f"median {reduce['median_s'] * 1e3:.2f} ms, best {reduce['min_s'] * 1e3:.2f} ms per "
        f"call ({opts.reduces} calls), i.e. "
        f"{reduce['median_s'] / (results['workers'] / steps) * 100:.0f}% of a 2-worker step.",
        "",
        "Scaling **model** (not measured): one worker = this machine, "
        f"{per_image * 1e3:.3f} ms of compute per image (the `none` row, validation included), "
        f"ring all-reduce of {nbytes / 1e6:.2f} MB, {LATENCY_S * 1e6:.0f} us per hop (assumed); "
        "speed-up against one worker. 'batch even' is the global batch at which compute equals "
        "the all-reduce: above it, compute dominates.",
    ]
    for per_worker, title in (
        (False, "global batch 32 (strong scaling: the dynamics of one process)"),
        (True, "32 images per worker (weak scaling: global batch 32 x workers)"),
    ):
        lines += [
            "",
            f"Model, {title}:",
            "",
            "| Gbit/s | workers | global batch | compute ms | all-reduce ms | images/s | speed-up "
            "| efficiency | batch even |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in scaling_model(per_image, nbytes, 32, per_worker):
            lines.append(
                f"| {r['gbit']} | {r['workers']} | {r['batch']} | {r['compute_ms']:.2f} | "
                f"{r['comm_ms']:.2f} | {r['images_per_s']:.0f} | {r['speedup']:.2f}x | "
                f"{r['efficiency'] * 100:.0f}% | {r['batch_even']:.0f} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    replace_section(opts.out, "## Distributed training", text)


if __name__ == "__main__":
    main()
