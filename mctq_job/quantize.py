"""Stage ``quantize``: MCT post-training quantization of the Keras model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import model_compression_toolkit as mct


@dataclass(frozen=True)
class Quantized:
    model: Any          # MCT's quantized Keras model (fake-quant wrappers)
    info: Any           # MCT's UserInformation
    target_platform: str


def target_platform_capabilities(name: str):
    return mct.get_target_platform_capabilities(device_type=name)


def quantize(model: Any, representative_data_gen: Callable, target_platform: str) -> Quantized:
    tpc = target_platform_capabilities(target_platform)
    quantized, info = mct.ptq.keras_post_training_quantization(
        model, representative_data_gen, target_platform_capabilities=tpc)
    return Quantized(quantized, info, target_platform)


def versions() -> dict[str, str]:
    return {"model_compression_toolkit": mct.__version__}
