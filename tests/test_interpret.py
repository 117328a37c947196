"""Interpretation from an exported model: a model whose output depends only on the top-left quadrant gets
integrated-gradient (SavedModel function) and Grad-CAM (Keras model beside the export) maps concentrated
there; a transformer export gets token Grad-CAM (unless pooled by its class token); without a Keras model
Grad-CAM is skipped with a note."""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import make_run, output_spec, write_run_dir

SHAPE = (16, 16, 1)


def quadrant_run(run_dir: Path) -> Path:
    """conv features everywhere, then everything outside the top-left 8x8 quadrant cropped away and padded
    back with zeros: the output cannot depend on the other three quadrants (beyond the conv's 1 px reach).
    No normalisation: a per-image standardisation would make every pixel matter through the mean and std."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(SHAPE, name="images")
    features = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    kept = keras.layers.Cropping2D(((0, 8), (0, 8)))(features)
    masked = keras.layers.ZeroPadding2D(((0, 8), (0, 8)), name="quadrant")(kept)
    pooled = keras.layers.GlobalAveragePooling2D()(masked)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="head")(pooled)
    net = keras.Model(inputs, outputs)
    return write_run_dir(run_dir, net, task="lens_finding", model="quadrant", shape=SHAPE,
                         normalisation={"method": "none"}, output=output_spec("binary").to_json())


@pytest.fixture(scope="module")
def quadrant_export(tmp_path_factory) -> Path:
    from lensnet.serving.export import export_run

    base = tmp_path_factory.mktemp("interpret")
    result = export_run(quadrant_run(base / "run"), base / "export" / "quadrant")
    # The Keras model travels with the export (the run folder may be gone where the export is used).
    shutil.copy(base / "run" / "checkpoints" / "best.keras", result.path / "model.keras")
    shutil.rmtree(base / "run")
    return base / "export" / "quadrant"


@pytest.mark.slow
def test_maps_concentrate_on_the_quadrant_the_output_reads(quadrant_export, tmp_path):
    from lensnet.artifacts.exports import load_export
    from lensnet.survey.interpret import Explainer, concentration
    from lensnet.survey.pngs import overlay, write_png

    explainer = Explainer(load_export(quadrant_export))
    assert explainer.methods == ["integrated_gradients", "gradcam"]  # no attention layers: no rollout
    assert explainer.notes["attention_rollout"].startswith("skipped")
    assert "model.keras" in explainer.notes["gradcam"] and "SavedModel" in explainer.notes["integrated_gradients"]
    images = (5 + np.random.default_rng(1).standard_normal((4, *SHAPE))).astype("float32")
    maps = explainer.explain(images)
    mask = np.zeros(SHAPE[:2], bool)
    mask[:9, :9] = True  # the quadrant and the conv's 1 px reach
    for method, values in maps.items():
        assert values.shape == (4, *SHAPE[:2]) and values.max() <= 1.0
        assert concentration(values, mask) > 0.95, method
    write_png(tmp_path / "o.png", overlay(images[0], maps["gradcam"][0]), 4)
    assert (tmp_path / "o.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_transformer_gets_token_gradcam_and_no_keras_means_no_gradcam(tmp_path):
    from lensnet.artifacts.exports import load_export
    from lensnet.serving.export import export_run
    from lensnet.survey.interpret import Explainer

    run = make_run(tmp_path / "run_vit", "vit_tiny", kind="multiclass", shape=SHAPE, args={"pooling": "tokens_avg"})
    export_run(run, tmp_path / "export" / "vit")
    explainer = Explainer(load_export(tmp_path / "export" / "vit"))
    assert "gradcam" in explainer.methods and "token Grad-CAM" in explainer.notes["gradcam"]
    assert "attention_rollout" in explainer.methods
    maps = explainer.explain(np.random.default_rng(2).standard_normal((2, *SHAPE)).astype("float32"))
    for method in ("gradcam", "attention_rollout"):
        assert maps[method].shape == (2, 16, 16) and np.isfinite(maps[method]).all(), method
        assert 0 <= maps[method].min() and maps[method].max() <= 1.0, method
    assert maps["attention_rollout"].max() == pytest.approx(1.0)
    assert maps["gradcam"].max() == pytest.approx(1.0)  # the pooled output reads the patch tokens
    shutil.rmtree(run)  # the card's checkpoint is gone and nothing sits beside the export
    explainer = Explainer(load_export(tmp_path / "export" / "vit"))
    assert explainer.methods == ["integrated_gradients"] and explainer.notes["gradcam"].startswith("skipped")


@pytest.mark.slow
def test_class_token_pooling_skips_gradcam_with_a_note(tmp_path):
    """Pooled by its class token, a ViT's output reads no patch token: their gradient, and so token Grad-CAM,
    is 0 everywhere, which would be drawn as an empty map; the method is skipped and says why."""
    from lensnet.artifacts.exports import load_export
    from lensnet.serving.export import export_run
    from lensnet.survey.interpret import Explainer

    run = make_run(tmp_path / "run_vit", "vit_tiny", kind="multiclass", shape=SHAPE)  # pooling "cls"
    export_run(run, tmp_path / "export" / "vit")
    explainer = Explainer(load_export(tmp_path / "export" / "vit"))
    assert "gradcam" not in explainer.methods and "class-token pooling" in explainer.notes["gradcam"]
    assert "attention_rollout" in explainer.methods
