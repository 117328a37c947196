"""Score a model on a split: predictions, task metrics, plots, TensorBoard images. Shared by fit and evaluate."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from lensnet.core.fileio import write_json
from lensnet.data import load
from lensnet.data.augment import GROUPS
from lensnet.data.pipeline import reader_error
from lensnet.tasks import plots
from lensnet.tasks.base import BatchContext, Task

TTA_GROUPS = tuple(GROUPS)  # lensnet.data.augment's symmetry groups


def check_tta(tta: str | None, task: Task, image_shape: Any) -> None:
    """Test-time augmentation averages class probabilities over a symmetry group of the images."""
    from lensnet.core.errors import LensnetError

    if tta is None:
        return
    if tta not in TTA_GROUPS:
        raise LensnetError(f"--tta: unknown group {tta!r}; choose one of {', '.join(TTA_GROUPS)}")
    kind = task.output_spec().kind
    if kind != "probabilities":
        raise LensnetError(f"--tta averages class probabilities; this run's model returns {kind}")
    if tta == "d4" and image_shape[0] != image_shape[1]:
        raise LensnetError(f"--tta d4 needs square images, the dataset's are {image_shape[0]}x{image_shape[1]}")


def predict_split(model: keras.Model, task: Task, info: Any, split: str, normalise: dict, batch_size: int = 64,
                  keep_images: int = 0, progress: bool = True, tta: str | None = None) -> dict:
    """Run the model over a split in order; returns y_true, y_pred, ids and the first `keep_images` images.

    `normalise` is the run's normalisation spec (run.json), so a model scored on another
    dataset sees its inputs scaled exactly as in training. The model's inputs are what the
    task's `prepare` makes of each batch (outside training: no training-time randomness).
    `tta` (rot180 | flips | d4): the prediction is the mean over the group's views of each image (classification;
    use the group the dataset is symmetric under, its manifest's config.symmetry).
    """
    from lensnet.core.progress import Progress
    from lensnet.data.augment import group_views

    check_tta(tta, task, info.image_shape)

    fields = tuple(dict.fromkeys((*task.fields, *task.score_fields, "image", "id")))
    dataset = load(info, split, batch_size=batch_size, fields=fields, shuffle=False, augment=None,
                   normalise=normalise)
    y_true, y_pred, ids, images, records = [], [], [], [], []
    # named functions, not lambdas: AutoGraph cannot find a lambda's source when two share a statement (a warning
    # at the end of every run otherwise)
    def averaged(x: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(tf.stack([model(v, training=False) for v in group_views(x, tta)]), axis=0)

    def plain(x: tf.Tensor) -> tf.Tensor:
        return model(x, training=False)

    predict = tf.function(averaged if tta else plain, reduce_retracing=True)
    try:
        with Progress(info.counts[split], f"scoring {split} split", "img", enabled=progress) as bar:
            for step, batch in enumerate(dataset):
                x = task.prepare(batch, BatchContext(seed=0, epoch=0, step=step, training=False))[0]
                y_pred.append(keras.ops.convert_to_numpy(predict(x)))
                numpy_batch = {k: v.numpy() for k, v in batch.items()}  # every field: an image task's targets
                y_true.append(task.targets(numpy_batch))                # may need the input (a baseline)
                records.append(task.record_fields(numpy_batch))
                ids.extend(x.decode() for x in numpy_batch["id"])
                if sum(len(i) for i in images) < keep_images:
                    images.append(batch["image"].numpy())
                bar.update(len(numpy_batch["id"]))
    except tf.errors.OpError as exc:
        raise reader_error(exc, info) from None
    result = {"y_true": np.concatenate(y_true), "y_pred": np.concatenate(y_pred).astype(np.float64), "ids": ids}
    result["records"] = {k: np.concatenate([r[k] for r in records]) for k in (records[0] if records else {})}
    result["images"] = np.concatenate(images)[:keep_images] if images else np.zeros((0,))
    return result


def report(model: keras.Model, task: Task, info: Any, split: str, normalise: dict, out_dir: Path, *,
           batch_size: int = 64,
           extra: dict | None = None, tensorboard_dir: Path | None = None, history_csv: Path | None = None,
           n_images: int = 16, progress: bool = True, tta: str | None = None) -> dict:
    """Score `model` on `split`, write metrics.json and plots under `out_dir`, images to TensorBoard."""
    result = predict_split(model, task, info, split, normalise, batch_size, keep_images=n_images, progress=progress,
                           tta=tta)
    return write_report(result, task, info, split, out_dir, model=model, extra=extra, tensorboard_dir=tensorboard_dir,
                        history_csv=history_csv, n_images=n_images, tta=tta)


def write_report(result: dict, task: Task, info: Any, split: str, out_dir: Path, *, model: keras.Model | None = None,
                 extra: dict | None = None, tensorboard_dir: Path | None = None, history_csv: Path | None = None,
                 n_images: int = 16, tta: str | None = None) -> dict:
    """metrics.json, plots and TensorBoard images of a `predict_split` result (`model`: its example figures;
    None for an ensemble, which has no single model to draw them from)."""
    out_dir = Path(out_dir)
    metrics = task.score_records(result["y_true"], result["y_pred"], result["records"])
    metrics = {"split": split, "dataset": str(info.path), "dataset_checksum": info.checksum, **(extra or {}),
               **({"tta": tta} if tta else {}), **metrics}
    write_json(out_dir / "metrics.json", metrics)
    write_predictions(out_dir / "predictions.npz", result)
    figures = task.plot(result["y_true"], result["y_pred"], out_dir / "plots")
    if len(result["images"]) and model is not None:
        n = len(result["images"])
        extra_figures = task.example_figures(model, result["images"], result["y_true"][:n], result["y_pred"][:n])
        for name, fig in extra_figures.items():
            figures[name] = plots.save(fig, out_dir / "plots" / f"{name}.png")
    if history_csv is not None:
        fig = plots.learning_curves_figure(history_csv, task.monitor)
        if fig is not None:
            figures["learning_curves"] = plots.save(fig, out_dir / "plots" / "learning_curves.png")
    if len(result["images"]):
        titles = [f"{task.truth(t)}\n{task.describe(p)}"
                  for t, p in zip(result["y_true"][:n_images], result["y_pred"][:n_images])]
        figures["samples"] = plots.save(plots.samples_figure(result["images"], titles),
                                        out_dir / "plots" / "samples.png")
    if tensorboard_dir is not None:
        write_tensorboard(tensorboard_dir, figures, metrics, split)
    return metrics


def write_predictions(path: Path, result: dict) -> None:
    """Per-record scores beside metrics.json, so figures can be recomputed (other thresholds, ensembles, a
    subset of impostors) without scoring again: ids, y_true, y_pred and the task's record fields as
    `record_<name>`. Read with np.load(path, allow_pickle=False)."""
    from lensnet.core.fileio import atomic_open

    arrays = {"ids": np.asarray(result["ids"], dtype=str), "y_true": np.asarray(result["y_true"]),
              "y_pred": np.asarray(result["y_pred"]),
              **{f"record_{k}": np.asarray(v) for k, v in result["records"].items()}}
    arrays = {k: v.astype(str) if v.dtype == object else v for k, v in arrays.items()}  # no pickle to read
    with atomic_open(path) as handle:
        np.savez(handle, **arrays)


def write_tensorboard(log_dir: Path, figures: dict[str, Path], metrics: dict, split: str) -> None:
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        for name, path in figures.items():
            image = tf.image.decode_png(Path(path).read_bytes(), channels=4)[None]
            tf.summary.image(f"{split}/{name}", image, step=0)
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None:
                tf.summary.scalar(f"{split}/{key}", float(value), step=0)
    writer.flush()


def open_run_on(run_dir: str | Path, data: str | Path | None, split: str) -> tuple[Any, Task, Any, keras.Model]:
    """A finished run's (RunInfo, task, dataset info, best model) for scoring `split` of `data` (default: its own).

    The task is rebuilt from the run (config.yaml's task section + run.json's task_state), so its
    classes, positive class or target standardisation are the trained model's; the task itself
    checks that the dataset fits and maps its labels by class name. Only `split` is required.
    """
    from lensnet.artifacts.runs import read_run
    from lensnet.core.config import load_yaml
    from lensnet.core.errors import LensnetError
    from lensnet.data import open_dataset
    from lensnet.tasks.base import require_splits, task_from_config
    from lensnet.tasks.checkpoints import load_model

    run_dir = Path(run_dir)
    run = read_run(run_dir)
    config = load_yaml(run_dir / "config.yaml", "run config")
    info = open_dataset(data or run.dataset["path"])
    if list(info.image_shape) != list(run.input_shape):
        raise LensnetError(f"dataset {info.path} has images of shape {tuple(info.image_shape)}, but the model of "
                           f"this run takes {tuple(run.input_shape)}")
    if not run.task_state:
        raise LensnetError(f"{run_dir}/run.json has no task_state (written by an older lensnet); retrain the run")
    task = task_from_config(config, info, state=run.task_state)
    require_splits(info, (split,))
    return run, task, info, load_model(run_dir)


def evaluate_run(run_dir: str | Path, data: str | Path | None = None, split: str = "test",
                 out: str | Path | None = None, batch_size: int = 64, n_images: int = 16,
                 tta: str | None = None) -> tuple[dict, Path]:
    """Score a finished run on `split` of any compatible dataset (default: the run's own); see `open_run_on`."""
    run_dir = Path(run_dir)
    run, task, info, model = open_run_on(run_dir, data, split)
    check_tta(tta, task, info.image_shape)
    suffix = f"-tta-{tta}" if tta else ""
    out_dir = Path(out) if out else run_dir / "eval" / f"{info.name}-{split}{suffix}"
    metrics = report(model, task, info, split, run.normalisation, out_dir, batch_size=batch_size,
                     extra={"run": str(run_dir), "model": run.model},
                     tensorboard_dir=run_dir / "logs" / f"eval_{info.name}_{split}{suffix}", n_images=n_images,
                     tta=tta)
    return metrics, out_dir


def evaluate_ensemble(run_dirs: Sequence[str | Path], data: str | Path | None = None, split: str = "test",
                      out: str | Path | None = None, batch_size: int = 64, n_images: int = 16,
                      tta: str | None = None) -> tuple[dict, Path]:
    """Score the mean class probabilities of several finished runs (an ensemble, as survey lens searches
    combine their finders) on `split` of `data` (default: the first run's dataset).

    Each member sees the images normalised as in its own training; the members must be one task with the same
    trained state (class names, positive class), returning probabilities. metrics.json lists the members.
    """
    from lensnet.core.errors import LensnetError

    run_dirs = [Path(r) for r in run_dirs]
    if len(run_dirs) < 2:
        raise LensnetError("an ensemble needs at least two --run")
    if len(set(map(str, run_dirs))) != len(run_dirs):
        raise LensnetError("--run: the same run is given twice")
    first_run, task, info, model = open_run_on(run_dirs[0], data, split)
    kind = task.output_spec().kind  # every member is this task (checked below), so this holds for all
    if kind != "probabilities":
        raise LensnetError(f"an ensemble averages class probabilities; {run_dirs[0]} returns {kind}")
    members = [(run_dirs[0], first_run, task, model)]
    for run_dir in run_dirs[1:]:
        run, other, _, member = open_run_on(run_dir, info.path, split)
        if other.name != task.name or other.state() != task.state():
            raise LensnetError(f"--run {run_dir}: a {other.name} run with {other.state()} cannot join an ensemble "
                               f"of {task.name} runs with {task.state()}")
        members.append((run_dir, run, other, member))
    check_tta(tta, task, info.image_shape)
    results = [predict_split(member, member_task, info, split, run.normalisation, batch_size,
                             keep_images=n_images if i == 0 else 0, tta=tta)
               for i, (_, run, member_task, member) in enumerate(members)]
    if any(r["ids"] != results[0]["ids"] for r in results[1:]):  # one reader, one order: a guard, not a case
        raise LensnetError(f"the ensemble's members read {split} of {info.path} in different orders")
    result = dict(results[0], y_pred=np.mean([r["y_pred"] for r in results], axis=0))
    suffix = f"-tta-{tta}" if tta else ""
    names = "+".join(Path(r).name for r in run_dirs)
    out_dir = Path(out) if out else run_dirs[0] / "eval" / f"{info.name}-{split}-ensemble{len(run_dirs)}{suffix}"
    extra = {"run": str(run_dirs[0]), "model": f"ensemble({names})",
             "ensemble": [{"run": str(run_dir), "model": run.model} for run_dir, run, _, _ in members]}
    metrics = write_report(result, task, info, split, out_dir, extra=extra, n_images=n_images, tta=tta)
    return metrics, out_dir
