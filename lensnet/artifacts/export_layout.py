"""The layout of an export directory, as TF Serving expects it.

    export/<name>/<version>/      version = 1, 2, ... (a new export takes the next number)
      saved_model.pb, variables/  SavedModel; signature `serving_default`: images -> {output name: outputs}
      model.onnx                  the same function in ONNX: input `images`, one output
      card.json                   what the model is: task, input, normalisation, output spec, metrics, checks

Both artifacts take *raw* images (N, H, W, C) float32, apply the training normalisation
themselves and return outputs as the card's output spec describes (an image output already
mapped back to input units), so callers never normalise.
"""

CARD = "card.json"
CARD_FORMAT = 2  # card.json "format_version": 2 holds the output spec under "output"
ONNX_FILE = "model.onnx"
SIGNATURE = "serving_default"
INPUT_NAME = "images"
TMP_PREFIX = ".tmp-export-"  # an export in progress: hidden, renamed to its version number once verified
