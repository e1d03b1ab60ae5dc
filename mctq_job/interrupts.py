"""SIGTERM and SIGINT, handled even while the main thread is inside a long C++ call.

Python runs signal handlers only between bytecodes, which may be minutes away during a
TensorFlow conversion; Kubernetes and ``docker stop`` wait 30 and 10 seconds. The C-level
handler still writes the signal number to a wakeup fd at once, so a watcher thread reading
that fd can react immediately: it calls the callback the CLI installed (log, clean up, exit).
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable

HANDLED = (signal.SIGINT, signal.SIGTERM)


def install(on_signal: Callable[[int], None]) -> None:
    """Route SIGINT/SIGTERM to ``on_signal(signum)`` on a watcher thread. Main thread only."""
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    for signum in HANDLED:
        signal.signal(signum, _ignore_in_main_thread)
    watcher = threading.Thread(target=_watch, args=(reader, writer, on_signal), name="mctq-signals", daemon=True)
    watcher.start()


def _ignore_in_main_thread(signum: int, frame: object) -> None:
    """The watcher thread acts; the main thread's Python-level handler must do nothing."""


def _watch(reader: socket.socket, writer: socket.socket, on_signal: Callable[[int], None]) -> None:
    while True:
        data = reader.recv(1)
        if data and data[0] in HANDLED:
            on_signal(data[0])
            return
