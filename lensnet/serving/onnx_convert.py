"""TensorFlow -> ONNX conversion that never writes a silently broken file.

tf2onnx (1.17) logs an op it has no handler for and still writes the model, with
the TF op name left in the ONNX graph; onnxruntime then refuses the file. Keras'
exact GELU is `0.5 * x * erfc(-x / sqrt(2))`, and `Erfc` is such an op, so every
ViT / DeiT / Swin export hits it. Here:

- `Erfc` gets a real handler, registered through tf2onnx's own `@tf_op` mechanism:
  erfc(x) = 1 - erf(x), with ONNX `Erf` (opset >= 9). For GELU the argument is
  -x/sqrt(2), so 1 - erf only loses absolute precision where erfc is ~1e-8 and
  GELU is ~0 anyway.
- After conversion every node is checked against the ONNX op schemas and
  `onnx.checker` runs on the file, so an op without a handler fails the export
  with its name instead of producing a file that no runtime can load.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from lensnet.core.errors import LensnetError

DEFAULT_OPSET = 17  # onnxruntime >= 1.14 and most other runtimes execute it


class OnnxExportError(LensnetError):
    """The graph cannot be expressed faithfully in ONNX."""


_registered = False


def register_handlers() -> None:
    """Register lensnet's tf2onnx handlers (idempotent) and make tf2onnx work with numpy 2."""
    global _registered
    if _registered:
        return
    import tf2onnx  # noqa: F401  (loads the stock handlers first, so ours is added beside them)
    from keras.src.export.tf2onnx_lib import patch_tf2onnx
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    with _quiet_numpy_future_warning():
        patch_tf2onnx()  # Keras' own fix for tf2onnx under numpy 2 (np.object, constant folding)

    @tf_op("Erfc")
    class Erfc:  # noqa: F841  (registered by the decorator)
        @classmethod
        def version_9(cls, ctx: Any, node: Any, **kwargs: Any) -> None:
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
            one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
            erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
            # Reuse the node (and so its output name, shape and dtype) as the Sub.
            node.type = "Sub"
            ctx.replace_inputs(node, [one.output[0], erf.output[0]])

    _registered = True


@contextlib.contextmanager
def _quiet_numpy_future_warning() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*np.object.*")
        yield


@contextlib.contextmanager
def _tf2onnx_logs_captured() -> Iterator[list[str]]:
    """Collect tf2onnx's error log lines (e.g. 'Unsupported ops') instead of printing them."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger("tf2onnx")
    handler = Collect(level=logging.ERROR)
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def unknown_ops(model: Any) -> list[str]:
    """Op types of `model` (an onnx.ModelProto) that no ONNX schema defines, subgraphs included."""
    import onnx

    opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    missing: set[str] = set()

    def visit(graph: Any) -> None:
        for node in graph.node:
            domain = node.domain or "ai.onnx"
            try:
                onnx.defs.get_schema(node.op_type, opsets.get(domain, 1), "" if domain == "ai.onnx" else domain)
            except onnx.defs.SchemaError:
                missing.add(node.op_type if domain == "ai.onnx" else f"{domain}.{node.op_type}")
            for attr in node.attribute:
                if attr.HasField("g"):
                    visit(attr.g)
                for sub in attr.graphs:
                    visit(sub)

    visit(model.graph)
    return sorted(missing)


def _name_batch_dim(model: Any) -> None:
    """Call the leading dynamic dimension of every graph input and output "batch" (tf2onnx says "unk__N")."""
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def convert_function(
    function: Any, input_signature: Sequence[Any], path: str | os.PathLike, opset: int = DEFAULT_OPSET
) -> Any:
    """Convert a `tf.function` to ONNX at `path`; returns the onnx.ModelProto.

    Raises OnnxExportError naming the ops if any op could not be converted or the
    written file fails `onnx.checker`.
    """
    import onnx
    import tf2onnx

    register_handlers()
    try:
        with _tf2onnx_logs_captured() as logs, _quiet_numpy_future_warning():
            model, _ = tf2onnx.convert.from_function(
                function, input_signature=list(input_signature), opset=opset, output_path=os.fspath(path)
            )
    except Exception as exc:  # tf2onnx raises assorted types; all mean "cannot convert"
        first = " ".join(str(exc).split())[:300]
        raise OnnxExportError(f"ONNX conversion failed: {type(exc).__name__}: {first}") from exc
    missing = unknown_ops(model)
    if missing:
        detail = "; ".join(line for line in logs if "nsupported" in line)[:300]
        raise OnnxExportError(
            f"ONNX conversion left op(s) without an ONNX equivalent: {', '.join(missing)}"
            + (f" ({detail})" if detail else "")
        )
    _name_batch_dim(model)
    onnx.save(model, os.fspath(path))
    try:
        onnx.checker.check_model(os.fspath(path), full_check=True)
    except Exception as exc:  # checker raises ValidationError and others
        first = " ".join(str(exc).split())[:300]
        raise OnnxExportError(f"the converted ONNX model is invalid: {first}") from exc
    return model
