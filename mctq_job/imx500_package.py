"""Stage ``imx500``: Sony's converter (found and probed in the inputs stage) turns the staged
model_quantized.keras into the package for the sensor; its package, parameters and memory
report are staged with the other artifacts, and its memory facts answer "does it fit the
chip?". Runs only where ``imx500.package`` is on. A model the converter refuses as such (an
operator it does not have) is ``unsupported_model``, any other failure of it ``toolkit_failure``."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import artifacts, imx500
from .context import RunContext
from .errors import ToolkitError, UnsupportedModelError
from .events import Event

if TYPE_CHECKING:
    from .export import Exported
    from .imx500 import Converter


@dataclass(frozen=True)
class Packaged:
    """The stage's value: the converter's memory facts (results.json's ``imx500``)."""

    facts: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return dict(self.facts)


def run(ctx: RunContext, converter: Converter, exported: Exported) -> Packaged:
    """Convert in a private folder; the converter's output lines become ``library.log`` events."""
    if exported.keras is None:
        raise RuntimeError("the imx500 stage needs the export stage's model_quantized.keras")
    output_dir = exported.keras.final.parent

    def on_line(line: str) -> None:
        if line.strip():
            ctx.log.info(Event.LIBRARY_LOG.value, logger=imx500.EXECUTABLE, message=line.strip())

    work_dir = ctx.temp_folder("imxconv-")
    # The converter names the network in the package after its input file: give it the
    # published name, not the staging area's temporary one.
    named = work_dir / exported.keras.final.name
    _link_or_copy(exported.keras.staged, named)
    try:
        package = imx500.convert(converter, named, work_dir, on_line, ctx.cleanups)
    except imx500.ModelRefused as exc:  # the model must change: retrying cannot help
        raise UnsupportedModelError(str(exc), refused=exc.refused, converter_code=exc.code) from exc
    except imx500.ConverterError as exc:
        raise ToolkitError("IMX500 converter", exc, str(exc)) from exc
    produced = {
        artifacts.PACKAGE_FILE: package.packer_out,  # None where the model does not fit the chip
        artifacts.DNN_PARAMS_FILE: package.dnn_params,
        artifacts.MEMORY_REPORT_FILE: package.memory_report,
    }
    for name, source in produced.items():
        if source is not None:
            ctx.write(output_dir / name, source.read_bytes())
    return Packaged(package.facts)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed there
        shutil.copyfile(source, target)
