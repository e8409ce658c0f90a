"""Training-speed levers of l1cnn's loop, each measured by A/B on the real X-ray data.

The machine may be shared, so every comparison alternates its variants (epoch by epoch in
one process, or process by process) and reports medians and ratios, never single runs.

    python benchmarks/levers.py loop [--rounds 8]       # in one process: steps per call, autotune
    python benchmarks/levers.py env [--rounds 3]        # one process each: oneDNN, threads, XLA
    python benchmarks/levers.py ops                     # conv kernels and matmul, GFLOP/s
    python benchmarks/levers.py profile                 # TF profiler: op time share of a step
    python benchmarks/levers.py profile --data ../shared/data/hymenoptera [--precision P]
                                                        # the same at photo size (64x64x3)
    python benchmarks/levers.py infer [--rounds 30]     # test-split inference, in one process

Training images/s here count training steps only (no validation), epochs 2+.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "pneumoniamnist_balanced.npz"
SEED = 42


def _setup(xla: bool = False, data: Path = DATA, precision: str = "float32") -> dict:
    """The specified model, optimizer and per-epoch datasets, built as ``l1cnn.train`` does."""
    import dataclasses

    import tensorflow as tf

    from l1cnn import loop, runs
    from l1cnn.config import Config
    from l1cnn.data import class_weights, epoch_shuffle_seed, load_data, make_tf_dataset
    from l1cnn.model import build_model, compile_model
    from l1cnn.train import resolve_config

    config = Config()
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, precision=precision)
    )
    dataset = load_data(data, config.data, SEED)
    config = resolve_config(config, dataset)
    runs.set_seed(SEED)
    model = compile_model(build_model(config.model, dataset.image_shape), config)
    split = dataset.splits["train"]
    weights = class_weights(split.labels, config.train.class_weight)
    settings = loop.StepSettings(
        config.model.l1_lambda, config.model.l1_mode, config.train.learning_rate
    )

    def train_ds(epoch: int, autotune: bool = False):
        ds = make_tf_dataset(
            split,
            config.train.batch_size,
            shuffle=True,
            seed=epoch_shuffle_seed(SEED, epoch),
            weights=weights,
        )
        return ds if autotune else loop.without_autotune(ds)

    run_steps = loop.make_train_steps(model, model.optimizer, settings)
    if xla:
        run_steps = _xla_steps(model, settings)
    return {
        "tf": tf,
        "loop": loop,
        "model": model,
        "n": len(split),
        "train_ds": train_ds,
        "step": loop.make_train_step(model, model.optimizer, settings),
        "run_steps": run_steps,
    }


def _xla_steps(model, settings):
    """make_train_steps with the step body compiled by XLA (jit_compile=True)."""
    import tensorflow as tf

    from l1cnn import loop

    body = tf.function(loop._make_step_body(model, model.optimizer, settings), jit_compile=True)

    @tf.function
    def run(iterator, n, sums):
        steps = tf.constant(0)
        for _ in tf.range(n):
            x, y, w = next(iterator)
            loss, fit_loss, penalty, correct = body(x, y, w)
            size = tf.cast(tf.shape(y)[0], tf.float64)
            parts = [tf.cast(p, tf.float64) * size for p in (loss, fit_loss, penalty)]
            sums += tf.stack([*parts, tf.cast(correct, tf.float64), size])
            steps += 1
        return sums, steps

    return run


def _epoch_per_step(s: dict, ds) -> None:
    """The loop as it was: one step per call, four floats read per step."""
    sums = [0.0] * 4
    for x, y, w in ds:
        loss, fit_loss, penalty, correct = s["step"](x, y, w)
        b = int(y.shape[0])
        sums = [
            sums[0] + float(loss) * b,
            sums[1] + float(fit_loss) * b,
            sums[2] + float(penalty) * b,
            sums[3] + float(correct),
        ]


def _epoch_chunked(s: dict, ds, k: int) -> None:
    """As ``l1cnn.loop.fit`` runs an epoch: up to k steps per call, sums read once per call."""
    tf = s["tf"]
    n_batches = int(ds.cardinality())
    iterator = iter(ds)
    sums = tf.zeros([s["loop"].N_SUMS], tf.float64)
    done = 0
    while done < n_batches:
        want = min(k, n_batches - done)
        sums, ran = s["run_steps"](iterator, tf.constant(want), sums)
        done += int(ran)
        sums.numpy()
    del iterator


def _timed_epoch(s: dict, variant: str, epoch: int) -> float:
    """Seconds of one training epoch (from making the iterator to dropping it)."""
    autotune = variant.endswith("+autotune")
    name = variant.removesuffix("+autotune")
    ds = s["train_ds"](epoch, autotune=autotune)
    start = time.perf_counter()
    if name == "per_step":
        _epoch_per_step(s, ds)
    else:
        _epoch_chunked(s, ds, int(name.removeprefix("k")))
    return time.perf_counter() - start


def cmd_loop(args) -> None:
    """In one process, epoch by epoch in alternating order: per-step vs k steps per call."""
    variants = args.variants.split(",")
    s = _setup()
    epoch = 1
    for v in variants:  # trace everything first
        _timed_epoch(s, v, epoch)
        epoch += 1
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            times[v].append(_timed_epoch(s, v, epoch))
            epoch += 1
    _report(variants, {v: [s["n"] / t for t in ts] for v, ts in times.items()})


def _report(variants: list[str], ips: dict[str, list[float]]) -> None:
    base = statistics.median(ips[variants[0]])
    print(f"| variant | median img/s | ratio vs {variants[0]} | all runs |")
    print("| --- | --- | --- | --- |")
    for v in variants:
        m = statistics.median(ips[v])
        runs = ", ".join(f"{x:.0f}" for x in ips[v])
        print(f"| {v} | {m:.0f} | {m / base:.3f} | {runs} |")


ENV_VARIANTS = {
    # name: (environment, thread settings (inter, intra) or None, XLA step)
    "default": ({}, None, False),
    "onednn": ({"TF_ENABLE_ONEDNN_OPTS": "1"}, None, False),
    "inter1": ({}, (1, 0), False),
    "inter1_intra2": ({}, (1, 2), False),
    "intra1": ({}, (0, 1), False),
    # XLA cannot compile MaxPoolGrad with op determinism on, which l1cnn needs; measured
    # without determinism, against no_determinism.
    "xla": ({"L1CNN_LEVER_NO_DETERMINISM": "1"}, None, True),
    "no_determinism": ({"L1CNN_LEVER_NO_DETERMINISM": "1"}, None, False),
    "onednn_inter1": ({"TF_ENABLE_ONEDNN_OPTS": "1"}, (1, 0), False),
}


def _child_env(variant: str, epochs: int) -> dict:
    """Train ``epochs`` epochs (k=16 per call, as fit) in this process; img/s of epochs 2+."""
    env, threads, xla = ENV_VARIANTS[variant]
    import tensorflow as tf

    if threads is not None:
        tf.config.threading.set_inter_op_parallelism_threads(threads[0])
        tf.config.threading.set_intra_op_parallelism_threads(threads[1])
    if os.environ.get("L1CNN_LEVER_NO_DETERMINISM") == "1":
        from l1cnn import runs

        runs.set_seed = lambda seed: __import__("keras").utils.set_random_seed(seed)
    s = _setup(xla=xla)
    cpu = []
    ips = []
    for epoch in range(1, epochs + 1):
        c0 = time.process_time()
        t = _timed_epoch(s, "k16", epoch)
        cpu.append((time.process_time() - c0) / t)
        ips.append(s["n"] / t)
    return {
        "img_s": statistics.median(ips[1:]),
        "cores_busy": statistics.median(cpu[1:]),
    }


def cmd_env(args) -> None:
    """One process per variant, alternating variants, ``rounds`` times."""
    variants = args.variants.split(",")
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT / "src")}
            env.update(ENV_VARIANTS[v][0])
            proc = subprocess.run(
                [sys.executable, __file__, "child", v, "--epochs", str(args.epochs)],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            if proc.returncode != 0:
                raise SystemExit(f"{v} failed:\n{proc.stderr[-3000:]}")
            results[v].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {v}: {results[v][-1]}", file=sys.stderr, flush=True)
    _report(variants, {v: [x["img_s"] for x in rs] for v, rs in results.items()})
    busy = {v: statistics.median(x["cores_busy"] for x in rs) for v, rs in results.items()}
    print(
        "\ncores busy (process CPU time / wall), median: "
        + ", ".join(f"{v} {b:.2f}" for v, b in busy.items())
    )


def cmd_ops(args) -> None:
    """The three conv2 kernels of a step (batch 32) and a 2048² matmul, best of 5, GFLOP/s."""
    import tensorflow as tf

    tf.random.set_seed(1)
    tf.config.experimental.enable_op_determinism()
    b, reps = 32, 20
    x1 = tf.random.uniform([b, 26, 26, 32])
    k2 = tf.random.uniform([3, 3, 32, 64])
    g2 = tf.random.uniform([b, 24, 24, 64])
    a = tf.random.uniform([2048, 2048])
    conv2_flop = 2 * b * 24 * 24 * 9 * 32 * 64
    strides = [1, 1, 1, 1]

    def repeated(op):
        @tf.function
        def run():
            acc = tf.constant(0.0)
            for _ in tf.range(reps):
                acc += tf.reduce_sum(op()[..., :1])
            return acc

        return run

    ops = {
        "conv2 forward": (repeated(lambda: tf.nn.conv2d(x1, k2, 1, "VALID")), reps),
        "conv2 backprop input": (
            repeated(
                lambda: tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=[b, 26, 26, 32],
                    filter=k2,
                    out_backprop=g2,
                    strides=strides,
                    padding="VALID",
                )
            ),
            reps,
        ),
        "conv2 backprop filter": (
            repeated(
                lambda: tf.raw_ops.Conv2DBackpropFilter(
                    input=x1,
                    filter_sizes=[3, 3, 32, 64],
                    out_backprop=g2,
                    strides=strides,
                    padding="VALID",
                )
            ),
            reps,
        ),
        "matmul 2048²": (lambda: tf.linalg.matmul(a, a), 1),
    }
    flops = {k: conv2_flop for k in ops} | {"matmul 2048²": 2 * 2048**3}
    for fn, _ in ops.values():
        fn().numpy()
    times: dict[str, list[float]] = {k: [] for k in ops}
    for _ in range(5):
        for k, (fn, n) in ops.items():
            start = time.perf_counter()
            fn().numpy()
            times[k].append((time.perf_counter() - start) / n)
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset")
    print(f"TF_ENABLE_ONEDNN_OPTS={onednn}")
    for k in ops:
        best = min(times[k])
        print(f"| {k} | {best * 1e3:.2f} ms | {flops[k] / best / 1e9:.0f} GFLOP/s |")


def cmd_profile(args) -> None:
    """TF profiler over two epochs (k=16 per call): share of op time by op, per step."""
    s = _setup(data=args.data, precision=args.precision)
    tf = s["tf"]
    _timed_epoch(s, "k16", 1)
    logdir = tempfile.mkdtemp(prefix="l1cnn-prof-")
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    steps = 0
    for epoch in (2, 3):
        _timed_epoch(s, "k16", epoch)
        steps += int(s["train_ds"](epoch).cardinality())
    wall = time.perf_counter() - start
    tf.profiler.experimental.stop()
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    path = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0]
    space.ParseFromString(Path(path).read_bytes())
    op_ms: collections.Counter = collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for ev in line.events:
                name = names[ev.metadata_id]
                if ":" in name and "::" not in name:  # "node:OpType"; not envelopes (A::B)
                    node, op = name.rsplit(":", 1)
                    layer = next((p for p in node.split("/") if p.startswith("conv")), "")
                    key = f"{op} ({layer.split('_')[0]})" if layer and "Conv" in op else op
                    op_ms[key] += ev.duration_ps / 1e9
    total = sum(op_ms.values())
    print(
        f"{steps} steps in {wall:.2f} s traced ({wall / steps * 1e3:.1f} ms/step wall); "
        f"op time summed over compute threads {total / steps:.1f} ms/step"
    )
    print("| op | ms/step (summed over threads) | share of op time |")
    print("| --- | --- | --- |")
    for op, ms in op_ms.most_common(18):
        print(f"| {op} | {ms / steps:.2f} | {ms / total:.1%} |")


def cmd_infer(args) -> None:
    """Test-split inference: as l1cnn.predict does it, without autotune, one call on NumPy."""
    import numpy as np

    from l1cnn import loop
    from l1cnn.data import PREDICT_CHUNK as CHUNK
    from l1cnn.data import make_tf_dataset

    s = _setup()
    from l1cnn.config import Config
    from l1cnn.data import load_data

    test = load_data(DATA, Config().data, SEED).splits["test"]
    predict = loop.make_predict_fn(s["model"])

    def as_predict_split(ds):  # the tf.data path, without predict_dataset's autotune switch
        return np.concatenate([predict(batch[0]) for batch in ds])

    variants = {
        "tf.data, autotune": lambda: as_predict_split(make_tf_dataset(test, CHUNK)),
        "tf.data, no autotune": lambda: loop.predict_dataset(predict, make_tf_dataset(test, CHUNK)),
        "NumPy, one call": lambda: predict(test.images.astype(np.float32)),
    }
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[v].append(time.perf_counter() - start)
    print(f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}")
    print("| variant | median img/s | mean img/s | slowest call (ms) |")
    print("| --- | --- | --- | --- |")
    for v, ts in times.items():
        print(
            f"| {v} | {len(test) / statistics.median(ts):.0f} | "
            f"{len(test) / statistics.mean(ts):.0f} | {max(ts) * 1e3:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("loop")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--variants", default="per_step,k1,k8,k16,k76,k16+autotune")
    p = sub.add_parser("env")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--variants", default="default,onednn,inter1,inter1_intra2,xla")
    p = sub.add_parser("child")
    p.add_argument("variant", choices=list(ENV_VARIANTS))
    p.add_argument("--epochs", type=int, default=5)
    sub.add_parser("ops")
    p = sub.add_parser("profile")
    p.add_argument("--data", type=Path, default=DATA, help="npz file or class folders")
    p.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16"])
    p = sub.add_parser("infer")
    p.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    if args.cmd == "child":
        print(json.dumps(_child_env(args.variant, args.epochs)))
        return
    commands = {
        "loop": cmd_loop,
        "env": cmd_env,
        "ops": cmd_ops,
        "profile": cmd_profile,
        "infer": cmd_infer,
    }
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
