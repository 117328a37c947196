"""Helpers shared by test modules (import them: `from helpers import make_run`); no test imports another.

    TINY            overrides that make each registry model build in well under a second
    make_run        a run directory as lensnet.fit leaves it, for a probabilities / values head
    make_image_run  the same for a tiny image-to-image model whose output spec is an image
    raw_images      random raw pixels
    three_way       max |diff| of the reloaded SavedModel and onnxruntime against Keras
    get, post, serve, TOKEN   the dashboard over real HTTP (a test server in a thread, requests as its page sends)
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from pathlib import Path

import keras
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

_EFF_TINY = {
    "width_coefficient": 0.25,
    "depth_coefficient": 0.5,
    "num_features": 32,
    "stackwise_kernel_sizes": [3, 3],
    "stackwise_num_repeats": [1, 2],
    "stackwise_input_filters": [32, 16],
    "stackwise_output_filters": [16, 32],
    "stackwise_expansion_ratios": [1, 4],
    "stackwise_squeeze_and_excite_ratios": [0.0, 0.25],
    "stackwise_strides": [1, 2],
    "stackwise_block_types": ["cba", "unfused"],
}
_VIT_TINY = {"hidden_dim": 16, "num_layers": 1, "num_heads": 2, "mlp_dim": 32, "patch_size": 4}
_CVT_TINY = {"embed_dims": [8, 8, 16], "depths": [1, 1, 1], "num_heads": [1, 1, 2], "patch_sizes": [3, 3, 3],
             "patch_strides": [2, 2, 2]}
_CCT_TINY = {"hidden_dim": 16, "num_layers": 1, "num_heads": 2, "tokenizer_filters": 8}
_RESNET_TINY = {"stem_filters": 4, "stage_filters": [4, 8], "stage_blocks": [1, 1]}
TINY: dict[str, dict] = {
    "cnn_small": {"filters": [4, 8]},
    "resnet18": _RESNET_TINY,
    "resnet34": _RESNET_TINY,
    "effnetv2_b0": _EFF_TINY,
    "effnetv2_s": _EFF_TINY,
    "vit_tiny": _VIT_TINY,
    "vit_small": _VIT_TINY,
    "deit_tiny": {"hidden_dim": 16, "num_layers": 1, "num_heads": 2, "intermediate_dim": 32, "patch_size": 4},
    "cvt_tiny": _CVT_TINY,
    "cvt_13": _CVT_TINY,
    "swin_tiny": {"embed_dim": 8, "depths": [2, 2], "num_heads": [2, 2], "window_size": 4, "patch_size": 2},
    "cct_7": _CCT_TINY,
    "cct_2": _CCT_TINY,
    "p4cnn_small": {"filters": [4, 8]},
    "d4cnn_small": {"filters": [4, 8]},
}

# The output spec each test head kind declares, as its task would.
KIND_TASKS = {"binary": "lens_finding", "multiclass": "substructure", "regression": "regression"}


def output_spec(kind: str, classes: int = 3):
    from lensnet.artifacts.outputs import OutputSpec

    if kind == "binary":
        return OutputSpec("probabilities", "probabilities", columns=("p_lens",), class_names=("non_lens", "lens"),
                          positive_class="lens")
    if kind == "multiclass":
        names = tuple(f"c{k}" for k in range(classes))
        return OutputSpec("probabilities", "probabilities", columns=tuple(f"p_{n}" for n in names), class_names=names)
    return OutputSpec("values", "value", columns=("radius",), units=("arcsec",))


def write_run_dir(run_dir: Path, net, *, task: str, model: str, shape, normalisation: dict, output: dict,
                  seed: int = 0, metrics: dict | None = None) -> Path:
    """checkpoints/best.keras + run.json (+ metrics.json), as lensnet.fit leaves them."""
    from lensnet.artifacts.runs import RunInfo, write_run

    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    net.save(run_dir / "checkpoints" / "best.keras")
    info = RunInfo(
        task=task,
        model=model,
        input_shape=list(shape),
        normalisation=normalisation,
        dataset={"path": "nowhere", "name": "synthetic", "checksum": "0" * 64},
        seed=seed,
        status="finished",
        epochs_done=1,
        best_epoch=1,
        output=output,
    )
    write_run(run_dir, info)
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


def make_run(
    run_dir: Path,
    model: str = "cnn_small",
    *,
    kind: str = "multiclass",
    shape: tuple[int, int, int] = (16, 16, 1),
    classes: int = 3,
    normalisation: dict | None = None,
    policy: str = "float32",
    seed: int = 0,
    metrics: dict | None = None,
    args: dict | None = None,
) -> Path:
    """A run directory with a tiny registry backbone (`args` over the tiny ones) + a head of `kind`
    (binary | multiclass | regression)."""
    from lensnet.models import create_model, pool_features

    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_global_policy(policy)
    try:
        backbone = create_model(model, shape, **{**TINY.get(model, {}), **(args or {})})
        inputs = keras.Input(shape, name="images")
        features = pool_features(backbone, backbone(inputs))
        if kind == "binary":
            outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="head")(features)
        elif kind == "multiclass":
            outputs = keras.layers.Dense(classes, activation="softmax", dtype="float32", name="head")(features)
        else:
            outputs = keras.layers.Dense(1, dtype="float32", name="head")(features)
        net = keras.Model(inputs, outputs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # Larger weights than the default init, so outputs are far from uniform and a wrong
    # conversion cannot hide behind near-constant probabilities.
    head = net.get_layer("head")
    rng = np.random.default_rng(seed)
    head.set_weights([rng.normal(0, 3.0, w.shape).astype("float32") for w in head.get_weights()])
    return write_run_dir(run_dir, net, task=KIND_TASKS[kind], model=model, shape=shape,
                         normalisation=normalisation or {"method": "standard"},
                         output=output_spec(kind, classes).to_json(), seed=seed, metrics=metrics)


def make_image_run(
    run_dir: Path,
    *,
    shape: tuple[int, int, int] = (16, 16, 1),
    normalisation: dict | None = None,
    inverse: object = "input",
    seed: int = 0,
) -> Path:
    """A run directory with a tiny image-to-image model (conv -> tanh -> conv, same shape out) whose
    output spec is an image mapped back to input units by `inverse` ("input": the run's normalisation)."""
    from lensnet.artifacts.outputs import OutputSpec

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape, name="images")
    hidden = keras.layers.Conv2D(4, 3, padding="same", activation="tanh")(inputs)
    outputs = keras.layers.Conv2D(shape[-1], 3, padding="same", dtype="float32", name="head")(hidden)
    net = keras.Model(inputs, outputs)
    spec = OutputSpec("image", "image", image={"shape": list(shape), "inverse": inverse})
    normalisation = normalisation or {"method": "dataset", "mean": [100.0] * shape[-1], "std": [20.0] * shape[-1]}
    return write_run_dir(run_dir, net, task="denoise", model="tiny_conv", shape=shape, normalisation=normalisation,
                         output=spec.to_json(), seed=seed)


def raw_images(n: int, shape: tuple[int, int, int], seed: int = 1, loc: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return (loc + scale * np.random.default_rng(seed).standard_normal((n, *shape))).astype("float32")


def keras_outputs(run: Path, images: np.ndarray) -> np.ndarray:
    """What the run's Keras model (float32) returns for raw `images`, post-processed as the export does."""
    from lensnet.artifacts.outputs import OutputSpec
    from lensnet.artifacts.runs import read_run
    from lensnet.serving.export import float32_model
    from lensnet.serving.verification import keras_reference
    from lensnet.tasks.checkpoints import load_model

    info = read_run(run)
    model, _ = float32_model(load_model(run))
    return keras_reference(model, info.normalisation, images, OutputSpec.from_json(info.output))


def three_way(version_dir: Path, run_dir: Path, images: np.ndarray) -> dict[str, float]:
    """Max |diff| of the reloaded SavedModel and onnxruntime against Keras (+ normalisation) on `images`."""
    import onnxruntime as ort
    import tensorflow as tf

    reference = keras_outputs(run_dir, images)
    card = json.loads((version_dir / "card.json").read_text())
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    saved = signature(images=tf.constant(images))[card["output"]["name"]].numpy()
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"images": images})[0]
    return {"savedmodel": float(np.abs(saved - reference).max()), "onnx": float(np.abs(onnx_out - reference).max())}


def make_results(folder: Path, n: int = 30, seed: int = 0) -> Path:
    """A lensnet.pipeline results folder without running models: candidates.csv (finder score, classifier
    probabilities, RA/Dec, a truth `label`), thumbnails, overlays and pipeline.json. Candidate k has finder
    score (k + 0.5) / n; labels are 1 for most high scores."""
    import csv

    from lensnet.survey.pngs import display, overlay, write_png

    rng = np.random.default_rng(seed)
    columns = ["id", "source", "unit", "x0", "y0", "x1", "y1", "ra", "dec", "finder_score", "classifier_predicted",
               "classifier_p_c0", "classifier_p_c1", "label", "thumbnail", "overlay_gradcam", "map_gradcam"]
    rows = []
    for k in range(n):
        cid = f"c{k:05d}"
        image = rng.standard_normal((16, 16, 1)).astype("float32")
        saliency = np.zeros((16, 16), "float32")
        saliency[:8, :8] = 1.0
        (folder / "maps").mkdir(parents=True, exist_ok=True)
        write_png(folder / "thumbs" / f"{cid}.png", display(image), 4)
        write_png(folder / "overlays" / f"{cid}.gradcam.png", overlay(image, saliency), 4)
        np.save(folder / "maps" / f"{cid}.gradcam.npy", saliency)
        score = (k + 0.5) / n
        p1 = float(rng.uniform())
        label = int(score > 0.4) if k % 7 else 1 - int(score > 0.4)
        rows.append([cid, f"tile.fits[x={k},y=0]", "tile.fits", k, 0, k + 16, 16, f"{150 + k * 1e-3:.9f}",
                     f"{2.2:.9f}", f"{score:.6g}", "c1" if p1 > 0.5 else "c0", f"{1 - p1:.6g}", f"{p1:.6g}", label,
                     f"thumbs/{cid}.png", f"overlays/{cid}.gradcam.png", f"maps/{cid}.gradcam.npy"])
    with open(folder / "candidates.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    meta = {"format": "lensnet-pipeline", "status": "done", "columns": columns,
            "stages": {"finder": {"name": "finder", "version": 1, "card": {"task": "lens_finding", "model": "x"}}},
            "interpretation": {"model": "finder", "methods": ["gradcam"], "notes": {}}, "totals": {"tiles": n}}
    (folder / "pipeline.json").write_text(json.dumps(meta))
    return folder


# ---- the dashboard over real HTTP (tests/test_dashboard*.py) ----

def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


TOKEN = "test-token-0123456789"


def post(url: str, body: dict | bytes, headers: dict | None = None) -> tuple[int, dict]:
    """A POST as the dashboard's own page sends it: its origin, the launch token (unless `headers` differ)."""
    origin = "/".join(url.split("/")[:3])
    sent = {"Content-Type": "application/json", "Origin": origin, "X-Lensnet-Token": TOKEN, **(headers or {})}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={k: v for k, v in sent.items() if v})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def raw_get(base: str, path: str) -> int:
    """A request with the path sent as written (urllib and browsers would normalise `..` away)."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.putrequest("GET", path, skip_host=False)
    connection.endheaders()
    status = connection.getresponse().status
    connection.close()
    return status


def serve(results: Path, run: Path | None = None, truth: Path | None = None, **access):
    from lensnet.core.http import Access, app_in_thread
    from lensnet.survey.dashboard import Results, RunView, create_app

    access = Access(access.pop("host", "127.0.0.1"), 0, token=TOKEN, **access)
    return app_in_thread(create_app(Results(results, truth), RunView(run) if run else None, access))
