"""Target platform capabilities: every platform and version the configuration accepts is one
MCT 2.6.1 has, and MCT's own defect in the tflite one is repaired."""

from __future__ import annotations

import pytest

from mctq_job.config import TPC_VERSIONS

pytestmark = pytest.mark.slow


def _unrunnable(tpc) -> list[str]:
    """Operator sets MCT refuses: quantization preserving yet with activation quantization on."""
    return [
        op.name
        for op in tpc.operator_set or ()
        if op.qc_options is not None
        and any(
            c.quantization_preserving and c.enable_activation_quantization
            for c in op.qc_options.quantization_configurations
        )
    ]


@pytest.mark.parametrize("platform,version", [(p, v) for p, versions in TPC_VERSIONS.items() for v in versions])
def test_every_accepted_platform_version_gives_a_runnable_tpc(platform, version):
    from mctq_job import quantize

    tpc = quantize.target_platform_capabilities(platform, version)
    assert tpc.tpc_platform_type == platform
    assert _unrunnable(tpc) == []


def test_the_repair_is_still_needed_for_mcts_tflite_tpc():
    """If MCT fixes its tflite TPC, this fails: the repair can then go."""
    import model_compression_toolkit as mct

    assert "MaxPool" in " ".join(_unrunnable(mct.get_target_platform_capabilities(device_type="tflite")))
