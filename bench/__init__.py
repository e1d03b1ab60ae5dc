"""`make bench`: the job measured at real size and on the digits demo (``python -m bench.run``).

A package: run its parts as modules from the repository root (``python -m bench.NAME``); each
part that measures in a fresh process starts its child the same way (:func:`common.module_command`).
Nothing here imports TensorFlow at import time. The tests never import it.
"""
