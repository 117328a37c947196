"""The serving library: what `lensnet.export`, `lensnet.predict`, `lensnet.serve` and the benchmarks import.

    runtimes      onnxruntime and SavedModel runners: raw images in, the output spec's outputs out
    onnx_convert  TensorFlow -> ONNX conversion that never writes a silently broken file
    verification  the batch and the comparison that must pass before a version is published
    export        a run directory -> a verified version (export_run)
    inputs        image files, folders and TFRecord datasets -> batches of raw images
    scoring       batches -> predict's CSV rows (and image files), through the output spec
    server        the TF Serving REST API over the versions of one export

The export directory's layout, its versions and its loader (load_export) live one layer down, in
lensnet.artifacts, because tasks (a distillation teacher) read exports too.

The CLIs (`lensnet/export.py`, `predict.py`, `serve.py`) hold only argument parsing and `main`.
Every stage dispatches on the run's OutputSpec (lensnet.artifacts.outputs), never on a kind name.

Layer: above simulate and tasks, beside training (the two never import each other). May import lensnet.core,
data, models, artifacts, simulate and tasks.
"""
