"""A detector cut before its post-processing, and that post-processing applied in Python.

The TFLite runtime has no kernel for ``tf.image.combined_non_max_suppression`` and none for
``edgemdt_cl``'s ``SSDPostProcess``, and MCT leaves both in float: model.tflite and
model_quantized.tflite hold the network up to the post-processing's inputs, as two named
outputs each with its own quantization (read them by signature name, never by order). The
evaluation then applies the model's own post-processing, with its exact parameters, to the
files' dequantized outputs: the same call for a combined NMS, the model's own layer instance
for SSDPostProcess.

TFLite's ``TFLite_Detection_PostProcess`` is not put into the files: it exists for SSD-style
anchors only, would turn the two quantized outputs into float detections (and the file into one
that is not integer only), takes batch 1 only, and its NMS differs in details from the model's
(no clipping, its own tie-breaking), so the evaluation would no longer measure the model's own
post-processing; the IMX500 runs the model's post-processing on the chip instead.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from .errors import UnsupportedModelError
from .tasks.detection import all_layers

NMS = "image.combined_non_max_suppression"
EXPAND_DIMS = ("expand_dims", "compat.v1.expand_dims")
#: The cut files' outputs by post-processing kind: signature name -> what it holds.
OUTPUTS = {
    "combined_non_max_suppression": {
        "boxes": "decoded boxes (batch, N, 4) [or (batch, N, q, 4)], normalized (y_min, x_min, y_max, x_max) of "
        "the model input",
        "scores": "class scores (batch, N, classes), the NMS's input",
    },
    "SSDPostProcess": {
        "box_codes": "SSD box codes (batch, N, 4) relative to the anchors (Faster R-CNN encoding)",
        "class_logits": "class logits (batch, N, classes), before the score converter",
    },
}


def _function(layer: Any) -> str:
    return str(getattr(layer, "symbol", "") or layer.get_config().get("function", ""))


def _is_nms(layer: Any) -> bool:
    return type(layer).__name__ == "TFOpLambda" and _function(layer) == NMS


def find(model: Any) -> Any:
    """The post-processing layer of ``model`` (SSDPostProcess or the combined NMS TFOpLambda)."""
    for layer in all_layers(model):
        if type(layer).__name__ == "SSDPostProcess" or _is_nms(layer):
            return layer
    raise UnsupportedModelError(
        "key 'source_keras_model': the detector's post-processing was not found; the detection export cuts the "
        "network before a tf.image.combined_non_max_suppression call or an edgemdt_cl SSDPostProcess layer, "
        "which the model must end in"
    )


def _nms_arguments(layer: Any) -> dict[str, Any]:
    node = layer.inbound_nodes[0]
    bound = inspect.signature(tf.image.combined_non_max_suppression).bind(*node.call_args, **node.call_kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _producer(tensor: Any) -> Any:
    history = getattr(tensor, "_keras_history", None)
    return history.layer if history is not None else None


@dataclass(frozen=True)
class CutPoint:
    """Where the network is cut: the post-processing's input tensors by output name, and
    whether the boxes were taken before the ``tf.expand_dims`` that feeds the NMS."""

    kind: str
    tensors: dict[str, Any]
    expanded: bool


def cut_point(model: Any) -> CutPoint:
    layer = find(model)
    if type(layer).__name__ == "SSDPostProcess":
        node = layer.inbound_nodes[0]
        inputs = tf.nest.flatten(node.call_args[0] if node.call_args else node.call_kwargs.get("inputs"))
        codes, logits = inputs[0], inputs[1]
        return CutPoint("SSDPostProcess", {"box_codes": codes, "class_logits": logits}, False)
    arguments = _nms_arguments(layer)
    boxes, expanded = arguments["boxes"], False
    before = _producer(boxes)
    if before is not None and type(before).__name__ == "TFOpLambda" and _function(before) in EXPAND_DIMS:
        node = before.inbound_nodes[0]
        inner = node.call_args[0] if node.call_args else node.call_kwargs["input"]
        axis = (node.call_args[1] if len(node.call_args) > 1 else node.call_kwargs.get("axis")) if node else None
        if axis in (2, -2) and len(inner.shape) == 3:
            boxes, expanded = inner, True
    return CutPoint("combined_non_max_suppression", {"boxes": boxes, "scores": arguments["scores"]}, expanded)


def cut(model: Any) -> Any:
    """``model`` up to its post-processing's inputs, as a Keras model with a dict of two outputs."""
    point = cut_point(model)
    return tf.keras.Model(model.inputs, point.tensors, name=f"{model.name}_cut")


def convert_float(cut_model: Any) -> bytes:
    """model.tflite of a cut detector: from a concrete function returning the dict, so that the
    signature's outputs keep the dict's names (``from_keras_model`` names them after layers)."""
    spec = [tf.TensorSpec(t.shape, tf.float32) for t in cut_model.inputs]
    function = tf.function(lambda x: cut_model(x, training=False)).get_concrete_function(*spec)
    from .tflite_int8 import concrete_converter

    data: bytes = concrete_converter(function, cut_model).convert()
    return data


@dataclass(frozen=True)
class PostProcessing:
    """The float model's post-processing, applied to a cut file's (dequantized) outputs."""

    kind: str
    layer: Any
    nms: dict[str, Any]  # combined NMS: its keyword parameters
    expanded: bool

    def __call__(self, outputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.kind == "SSDPostProcess":
            found = self.layer([tf.constant(outputs["box_codes"]), tf.constant(outputs["class_logits"])])
            return [np.asarray(t) for t in found]
        boxes = outputs["boxes"]
        if self.expanded:
            boxes = boxes[:, :, None, :]
        found = tf.image.combined_non_max_suppression(tf.constant(boxes), tf.constant(outputs["scores"]), **self.nms)
        return [
            found.nmsed_boxes.numpy(),
            found.nmsed_scores.numpy(),
            found.nmsed_classes.numpy(),
            found.valid_detections.numpy(),
        ]


def post_processing(model: Any) -> PostProcessing:
    layer = find(model)
    if type(layer).__name__ == "SSDPostProcess":
        return PostProcessing("SSDPostProcess", layer, {}, False)
    arguments = _nms_arguments(layer)
    keys = (
        "max_output_size_per_class",
        "max_total_size",
        "iou_threshold",
        "score_threshold",
        "pad_per_class",
        "clip_boxes",
    )
    return PostProcessing(
        "combined_non_max_suppression", layer, {k: arguments[k] for k in keys}, cut_point(model).expanded
    )


def deployer_runs(post: dict[str, Any] | None, expanded: bool = True) -> str:
    """What a deployer runs after the cut files' outputs, in words, with the parameters."""
    if not post:
        return "the model's post-processing (not recognized)"
    if post.get("kind") == "SSDPostProcess":
        return (
            f"edgemdt_cl SSDPostProcess on [box_codes, class_logits]: Faster R-CNN box decoding against the "
            f"model's {post.get('anchors')} anchors with scale factors {post.get('scale_factors')} and clip size "
            f"{post.get('clip_size')}, the score converter {post.get('score_converter')}, then a per-class NMS "
            f"(score_threshold {post.get('score_threshold')}, iou_threshold {post.get('iou_threshold')}, "
            f"max_detections {post.get('max_detections')}, remove_background {post.get('remove_background')})"
        )
    params = ", ".join(
        f"{k}={post.get(k)}"
        for k in (
            "max_output_size_per_class",
            "max_total_size",
            "iou_threshold",
            "score_threshold",
            "pad_per_class",
            "clip_boxes",
        )
    )
    boxes = "tf.expand_dims(boxes, 2)" if expanded else "boxes"
    return f"tf.image.combined_non_max_suppression({boxes}, scores, {params})"


def output_quantization(tflite_bytes: bytes) -> dict[str, dict[str, Any]]:
    """Each output of the file's default signature, by name: dtype, scale, zero point, shape,
    and where a float output is dequantized from an integer tensor (``quantized_io`` float),
    that tensor's type, scale and zero point: the grid the network computes it on."""
    interpreter = tf.lite.Interpreter(model_content=tflite_bytes)
    runner = interpreter.get_signature_runner()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    dequantized = {
        int(op["outputs"][0]): int(op["inputs"][0])
        for op in interpreter._get_ops_details()  # noqa: SLF001 - the only way to read the graph's operators here
        if op["op_name"] == "DEQUANTIZE"
    }
    found = {}
    for name, detail in sorted(runner.get_output_details().items()):
        scale, zero = detail["quantization"]
        record: dict[str, Any] = {
            "dtype": np.dtype(detail["dtype"]).name,
            "scale": float(scale),
            "zero_point": int(zero),
            "shape": [int(d) for d in detail["shape"]],
        }
        source = tensors.get(dequantized.get(int(detail["index"]), -1))
        if source is not None:
            grid_scale, grid_zero = source["quantization"]
            record["computed_as"] = {
                "dtype": np.dtype(source["dtype"]).name,
                "scale": float(grid_scale),
                "zero_point": int(grid_zero),
            }
        found[name] = record
    return found
