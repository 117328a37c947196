"""The serving library: what `lensnet.export`, `lensnet.predict`, `lensnet.serve` and the benchmarks import.

    layout        the export directory: export/<name>/<version>/{SavedModel, model.onnx, card.json}
    versions      version numbers, stale temporaries, publishing a verified version atomically
    loading       an exported version and its card (ExportedModel, load_export)
    runtimes      onnxruntime and SavedModel runners: raw images in, the output spec's outputs out
    onnx_convert  TensorFlow -> ONNX conversion that never writes a silently broken file
    verification  the batch and the comparison that must pass before a version is published
    export        a run directory -> a verified version (export_run)
    inputs        image files, folders and TFRecord datasets -> batches of raw images
    scoring       batches -> predict's CSV rows (and image files), through the output spec
    server        the TF Serving REST API over the versions of one export

The CLIs (`lensnet/export.py`, `predict.py`, `serve.py`) hold only argument parsing and `main`.
Every stage dispatches on the run's OutputSpec (lensnet.tasks.outputs), never on a kind name.
"""
