"""model.tflite converted by TensorFlow's converter in a worker process, started when the
export stage begins, so the float conversion and the quantized export (each mostly
single-threaded, about 20-30 s for a MobileNetV2) run side by side instead of one after the
other. (Started earlier, while MCT quantizes on every core, it slowed quantization down on
2 cores more than it saved, and its memory added to the quantize stage's peak.)

The worker is a fresh interpreter (``spawn``: never a fork of a process running TensorFlow's
threads) that loads the model from its file, converts it and sends the bytes back; the
export stage stages them exactly as it stages everything else. What the worker's native
code prints goes to a file the export stage logs. A worker costs a TensorFlow import and a
second copy of the float model, so small models are converted in-process as before.
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.connection import Connection
from pathlib import Path

from .cleanups import Cleanups
from .errors import ToolkitError, first_line

#: Models with fewer parameters convert in-process: a worker's start-up would cost more than it saves.
WORKER_MIN_PARAMETERS = 1_000_000
TOOL = "TensorFlow Lite converter"
STOP_GRACE_S = 3.0


class FloatConversion:
    """One worker converting the model at ``model_path``; :meth:`result` waits for its bytes.
    Its :meth:`stop` is registered in ``cleanups`` while it runs."""

    def __init__(self, model_path: Path, capture: Path, cleanups: Cleanups):
        context = multiprocessing.get_context("spawn")
        self._receiver, sender = context.Pipe(duplex=False)
        self.capture = capture
        self.process = context.Process(
            target=_convert, args=(str(model_path), sender, str(capture)), name="mctq-float-tflite", daemon=True
        )
        self._forget = cleanups.add(self.stop)
        self.process.start()
        sender.close()

    def result(self) -> bytes:
        """The converted model; a ToolkitError naming the converter where the worker failed or died."""
        try:
            status, payload = self._receiver.recv()
        except EOFError:
            self.process.join(STOP_GRACE_S)
            raise ToolkitError(
                TOOL, RuntimeError("worker ended"), f"its worker ended with exit code {self.process.exitcode}"
            ) from None
        finally:
            self._forget()
        self.process.join()
        if status != "ok":
            raise ToolkitError(TOOL, RuntimeError(payload), payload)
        data: bytes = payload
        return data

    def output(self) -> str:
        """What the worker's native code printed (TensorFlow's C++ logs), for a library.log event."""
        try:
            return self.capture.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""

    def stop(self) -> None:
        """End the worker now (interruption or a failed stage); safe from any thread."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(STOP_GRACE_S)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(STOP_GRACE_S)
        self._forget()


def _convert(model_path: str, sender: Connection, capture: str) -> None:
    """The worker: native output to ``capture``, then load, convert, send ("ok", bytes) or ("error", text)."""
    fd = os.open(capture, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf

        model = tf.keras.models.load_model(model_path, compile=False)
        sender.send(("ok", tf.lite.TFLiteConverter.from_keras_model(model).convert()))
    except Exception as exc:  # reported to the parent, which names the converter
        sender.send(("error", f"{type(exc).__module__}.{type(exc).__name__}: {first_line(exc)}"))
    finally:
        sender.close()
