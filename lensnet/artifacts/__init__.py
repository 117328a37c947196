"""The artifacts stages hand each other: what a run directory and an export directory hold, and output kinds.

    runs           runs/<name>/: run.json (RunInfo, the contract between stages), checkpoints, best_model_path
    outputs        output specs and the output-kind registry (probabilities, values, image, score)
    export_layout  export/<name>/<version>/: SavedModel, model.onnx, card.json
    versions       export version numbers, stale temporaries, publishing a version atomically
    exports        one exported version and its card (ExportedModel, load_export)

Layer: above core, data and models; below simulate, tasks, training, serving and everything else.
May import lensnet.core, lensnet.data and lensnet.models only.
"""
