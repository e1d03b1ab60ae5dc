"""What a TFLite file is made of, read from its flatbuffer: ``census`` counts its operators by
input type, says whether anything between the input and the output computes in float and how
many operators reshape weights at run time; ``io_quantization`` gives the type, scale and zero
point of its input and output. For any TFLite file: the job's, MCT's, TensorFlow's own."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

#: Operators that only move or re-index data: applied to constants, they reshape weights at run time.
DATA_MOVEMENT = frozenset(
    {
        "RESHAPE",
        "TRANSPOSE",
        "EXPAND_DIMS",
        "SQUEEZE",
        "STRIDED_SLICE",
        "SLICE",
        "PACK",
        "UNPACK",
        "GATHER",
        "SHAPE",
        "CONCATENATION",
        "SPLIT",
        "TILE",
        "BROADCAST_TO",
    }
)


def census(tflite_bytes: bytes) -> dict[str, Any]:
    """Operators of a TFLite file counted as "<OP>/<first input dtype>", whether everything between
    the input and the output computes in integers, and how many operators reshape weights at run time."""
    graph = _Graph(tflite_bytes)
    operators: dict[str, int] = {}
    for op in graph.operators:
        key = f"{graph.op_name(op)}/{graph.dtype(op.inputs[0]) if len(op.inputs) else 'none'}"
        operators[key] = operators.get(key, 0) + 1
    return {
        "operators": dict(sorted(operators.items())),
        "integer_only": not any(graph.computes_in_float(op) for op in graph.operators),
        "runtime_weight_reshapes": sum(graph.reshapes_constants(op) for op in graph.operators),
    }


def io_quantization(tflite_bytes: bytes) -> dict[str, dict[str, Any]]:
    """dtype, scale and zero point of the first input and output (scale 0.0 for float tensors)."""
    interpreter = tf.lite.Interpreter(model_content=tflite_bytes)
    return {
        "input": _io_record(interpreter.get_input_details()[0]),
        "output": _io_record(interpreter.get_output_details()[0]),
    }


def _io_record(detail: dict) -> dict[str, Any]:
    scale, zero_point = detail["quantization"]
    return {"dtype": np.dtype(detail["dtype"]).name, "scale": float(scale), "zero_point": int(zero_point)}


class _Graph:
    """The first subgraph of a TFLite flatbuffer, read with the schema module TensorFlow ships."""

    def __init__(self, tflite_bytes: bytes):
        from tensorflow.lite.python import schema_py_generated as schema

        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(tflite_bytes), 0))
        self.subgraph = model.subgraphs[0]
        self.operators = self.subgraph.operators or []
        self.codes = model.operatorCodes
        self.names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        self.types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
        self.constant = {
            i
            for i, t in enumerate(self.subgraph.tensors)
            if model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data)
        }
        self.inputs, self.outputs = set(self.subgraph.inputs), set(self.subgraph.outputs)
        self.constant_derived = self._constant_derived()

    def op_name(self, op: Any) -> str:
        code = self.codes[op.opcodeIndex]
        return self.names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")

    def dtype(self, tensor: int) -> str:
        return self.types[self.subgraph.tensors[tensor].type]

    def computes_in_float(self, op: Any) -> bool:
        """True for an operator reading or writing float tensors, except the QUANTIZE of a model
        input and the DEQUANTIZE of a model output (the boundary of a float-I/O model)."""
        name = self.op_name(op)
        if name == "QUANTIZE" and set(op.inputs) <= self.inputs:
            return False
        if name == "DEQUANTIZE" and set(op.outputs) <= self.outputs:
            return False
        tensors = [t for t in list(op.inputs) + list(op.outputs) if t >= 0]
        return any(self.dtype(t).startswith("float") for t in tensors)

    def reshapes_constants(self, op: Any) -> bool:
        """True for a data-movement operator whose data comes from constants only: work on weights
        that a converter would have done once, done at every inference."""
        return self.op_name(op) in DATA_MOVEMENT and len(op.inputs) > 0 and op.inputs[0] in self.constant_derived

    def _constant_derived(self) -> set[int]:
        derived = set(self.constant)
        for op in self.operators:  # TFLite stores operators in execution order
            if all(t in derived for t in op.inputs if t >= 0):
                derived.update(op.outputs)
        return derived
