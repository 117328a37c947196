"""Shared benchmark plumbing: result files, tables, interleaved timing."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lensnet.core.fileio import write_json
from lensnet.core.runinfo import package_versions

RESULTS_DIR = Path("bench/results")


def save_results(name: str, rows: Sequence[dict], args: dict, command: str) -> Path:
    """Write one benchmark run as JSON (rows + how and where it was measured)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(os.environ.get("LENSNET_BENCH_DIR", RESULTS_DIR)) / f"{name}-{stamp}.json"
    write_json(path, {
        "benchmark": name,
        "command": command,
        "args": args,
        "time_utc": stamp,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "versions": package_versions(),
        "rows": list(rows),
    })
    return path


def interleaved_rates(cases: dict[str, Callable[[], int]], rounds: int = 3) -> dict[str, float]:
    """Items/s of each case, run in alternation `rounds` times so machine noise hits all alike.

    Each callable does one unit of work and returns how many items it processed;
    the rate is total items over total time across rounds.
    """
    items = dict.fromkeys(cases, 0)
    seconds = dict.fromkeys(cases, 0.0)
    for _ in range(rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            items[name] += fn()
            seconds[name] += time.perf_counter() - t0
    return {name: items[name] / seconds[name] for name in cases}


def model_flops(model, input_shape: Sequence[int]) -> int | None:
    """Floating-point operations of one image through `model` (a multiply-add counts 2), as TF's
    profiler counts them on the traced graph (MatMul, Conv2D, ...); None if it cannot count."""
    import tensorflow as tf

    try:
        function = tf.function(lambda x: model(x, training=False))
        graph = function.get_concrete_function(tf.TensorSpec([1, *input_shape], tf.float32)).graph
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        return int(tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops)
    except Exception:  # a profiler without a registered count for some op: leave the column empty
        return None


def auc_difference(base: tuple, other: tuple, bootstrap: int, seed: int) -> dict:
    """Macro AUC of `other` minus `base` ((labels, probs, ...) of the same test records, as
    `lensnet.studies.detectability.predictions_on_test` returns them), with the paired bootstrap interval."""
    import numpy as np

    from lensnet.tasks.scores import paired_macro_auc_difference

    if not np.array_equal(base[0], other[0]):
        raise AssertionError("the two models were scored on different test records")
    found = paired_macro_auc_difference(base[0], base[1], other[1], bootstrap, seed)
    return {**found, "difference": round(found["difference"], 4)}
