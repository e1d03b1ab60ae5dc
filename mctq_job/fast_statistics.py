"""A faster, bit-identical replacement for MCT 2.6.1's per-batch activation statistics collection.

MCT's ``StatsCollector.update_statistics`` spends most of a quantization run on numpy work that
is repeated or single-threaded: a copy of every layer's output out of TensorFlow (``.numpy()``,
in the main thread, before any statistic starts), a float64 copy of every tensor, two 2048-bin ``np.histogram``
calls (the second weighted by ones, so equal to the first), each finding min and max again and
looping in Python over 64K-element blocks, and two transposed copies for the per-channel mean
and min/max. ``faster_statistics()`` swaps in code that makes one transposed float64 copy,
derives the per-channel statistics and a single histogram from it, and runs the tensors of a
batch on a small thread pool (numpy releases the GIL in its kernels). Inside
``ModelCollector.infer`` the layer outputs are read in place (``_numpy()``, a view of the
tensor's buffer) rather than copied: the statistics only read them. Every value stored in the
collectors equals MCT's bit for bit; where that cannot be shown cheaply (Hessian weights, NaN or
infinite values, a negative zero at the range's edge, unusual dtypes) MCT's own code runs.

The swap happens only for the MCT version it was checked against and is undone on exit.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The MCT release whose collectors this module reproduces; any other version runs MCT unchanged.
PINNED_MCT_VERSION = "2.6.1"

#: Elements per histogram step: the step's temporaries (~33 bytes per element) stay in L2 cache.
HISTOGRAM_CHUNK = 16384

#: Elements per block of the channels-first copy.
TRANSPOSE_BLOCK = 32768

_FLOAT_TO_INT: dict[np.dtype, Any] = {
    np.dtype(np.float32): np.dtype(np.int32),
    np.dtype(np.float64): np.dtype(np.int64),
}


@dataclass(frozen=True)
class Status:
    active: bool  # True: the fast path replaces MCT's collector internals inside the block
    reason: str  # why it is or is not active, for the run's log


# --- exact pieces -----------------------------------------------------------------------------


def histogram_range(channel_min: np.ndarray, channel_max: np.ndarray) -> tuple[np.float64, np.float64] | None:
    """Stands for ``numpy.lib.histograms._get_outer_edges(a, None)`` (the range ``np.histogram``
    finds for ``bins=int``): ``a.min()``/``a.max()``, widened by 0.5 each way when equal.

    The minimum of per-channel minima is the tensor's minimum (min is exact, order-free), up to
    the sign of a zero; callers make sure no negative zero is present when the result is zero.
    Returns None when the range is not finite, where numpy raises (callers run MCT's code then)."""
    first, last = np.min(channel_min), np.max(channel_max)
    if not (np.isfinite(first) and np.isfinite(last)):
        return None
    if first == last:
        first, last = first - 0.5, last + 0.5
    return first, last


def uniform_histogram(
    values: np.ndarray, first: np.float64, last: np.float64, n_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stands for ``np.histogram(values, bins=n_bins)`` (numpy 1.26) given that ``first``/``last``
    are the range it would find for ``values`` (float64, all within the range).

    Same edges (the same ``np.linspace`` call), and per element the same float64 operations in
    the same order: index = int(((x - first) / (last - first)) * n_bins), the top value moved
    into the last bin, then numpy's one-step correction against the edges (down if x is below
    its bin's left edge, then up if x reaches the next edge, never past the last, closed, bin).
    The range check numpy applies is always true here, and bin counts are order-free integer
    sums, so counting whole chunks instead of numpy's 64K blocks changes nothing."""
    edges = np.linspace(first, last, n_bins + 1, endpoint=True, dtype=np.result_type(first, last, values))
    next_edge = np.append(edges[1:-1], np.inf)  # inf: the last bin is never incremented out of
    width = np.subtract(last, first, dtype=edges.dtype)
    flat = values.reshape(-1)
    counts = np.zeros(n_bins, np.intp)
    scaled = np.empty(min(HISTOGRAM_CHUNK, flat.size), edges.dtype)
    index = np.empty(scaled.size, np.intp)
    edge = np.empty_like(scaled)
    outside = np.empty(scaled.size, bool)
    for start in range(0, flat.size, HISTOGRAM_CHUNK):
        chunk = flat[start : start + HISTOGRAM_CHUNK]
        size = chunk.size
        counts += np.bincount(
            _bin_indices(
                chunk, first, width, n_bins, edges, next_edge, scaled[:size], index[:size], edge[:size], outside[:size]
            ),
            minlength=n_bins,
        )
    return counts, edges


def _bin_indices(
    chunk: np.ndarray,
    first: np.float64,
    width: np.float64,
    n_bins: int,
    edges: np.ndarray,
    next_edge: np.ndarray,
    scaled: np.ndarray,
    index: np.ndarray,
    edge: np.ndarray,
    outside: np.ndarray,
) -> np.ndarray:
    """numpy 1.26's uniform-bin index computation for one chunk, written into preallocated buffers."""
    np.subtract(chunk, first, out=scaled)
    np.divide(scaled, width, out=scaled)
    np.multiply(scaled, n_bins, out=scaled)
    np.copyto(index, scaled, casting="unsafe")  # float -> intp truncation, as astype(np.intp)
    np.minimum(index, n_bins - 1, out=index)  # index == n_bins only for x == last
    np.take(edges, index, out=edge, mode="clip")  # indices are in range: no clipping
    np.less(chunk, edge, out=outside)
    if np.count_nonzero(outside):  # rare: skip the pass when nothing moves
        np.subtract(index, outside, out=index)  # numpy decrements first ...
    np.take(next_edge, index, out=edge, mode="clip")
    np.greater_equal(chunk, edge, out=outside)
    if np.count_nonzero(outside):
        np.add(index, outside, out=index)  # ... then increments from the new index
    return index


def channel_rows(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Stands for the float64 ``[channels, -1]`` array that ``MeanCollector.update`` and
    ``MinMaxPerChannelCollector.update`` each build from ``standardize_tensor(x)``:
    ``np.reshape(np.transpose(x.astype(np.float64), channel_first), [n, -1])``.

    Returns (rows, flat): rows with the same values AND the same memory layout as MCT's (so the
    reductions over them add in the same order), and a float64 array holding the same values as
    the tensor for the histogram. When the reshape needs a copy (the usual case) both are one
    C-ordered transposed copy made in a single cast-and-transpose pass; when it is a view, the
    rows are taken exactly as MCT takes them."""
    axis = x.ndim - 1 if axis == -1 else axis
    n = x.shape[axis]
    order = [axis, *[i for i in range(x.ndim) if i != axis]]
    transposed = np.transpose(x, order)
    as_view = transposed.view()
    try:
        as_view.shape = (n, -1)  # succeeds only when no copy is needed
    except AttributeError:
        rows = _transposed_float64(x, transposed, channels_last=axis == x.ndim - 1)
        return rows, rows
    x64 = x.astype(np.float64)
    return np.reshape(np.transpose(x64, order), [n, -1]), x64


def _transposed_float64(x: np.ndarray, transposed: np.ndarray, channels_last: bool) -> np.ndarray:
    """``transposed`` as a new C-ordered float64 array of shape [n, -1]. For a C-ordered tensor
    with channels last (Keras), the copy goes in blocks of positions that fit in cache: one big
    strided copy is several times slower."""
    n = transposed.shape[0]
    rows = np.empty(transposed.shape, np.float64).reshape(n, -1)
    if not (channels_last and x.flags.c_contiguous):
        np.copyto(rows.reshape(transposed.shape), transposed)
        return rows
    positions = x.reshape(-1, n)
    step = max(16, TRANSPOSE_BLOCK // n)
    for start in range(0, positions.shape[0], step):
        np.copyto(rows[:, start : start + step], positions[start : start + step].T)
    return rows


def has_negative_zero(x: np.ndarray) -> bool:
    """Whether ``x`` holds -0.0: its bit pattern (sign bit only) is the smallest signed integer."""
    as_int = _FLOAT_TO_INT[x.dtype]
    return bool(np.ascontiguousarray(x).view(as_int).min() == np.iinfo(as_int).min)


# --- replacements -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Batch:
    """What one ``update_statistics`` call adds to a ``StatsCollector``'s four collectors."""

    channel_max: np.ndarray
    channel_min: np.ndarray
    channel_mean: np.ndarray
    counts: np.ndarray
    edges: np.ndarray


def batch_statistics(x: np.ndarray, axis: int, n_bins: int) -> _Batch | None:
    """MCT's per-batch statistics of ``x`` computed once each; None where the fast path cannot
    promise identical values (the caller then runs MCT's own code)."""
    rows, flat = channel_rows(x, axis)
    channel_mean = np.mean(rows, axis=-1)
    if np.isnan(channel_mean).any():  # a NaN in x (or +inf and -inf in one channel): MCT's code decides
        return None
    negative_zero = has_negative_zero(x)
    channel_max, channel_min = channel_extremes(rows, negative_zero)
    edges_range = histogram_range(channel_min, channel_max)
    if edges_range is None:
        return None
    if 0 in (edges_range[0], edges_range[1]) and negative_zero:
        return None  # np.histogram's own min/max decides the zero's sign
    counts, edges = uniform_histogram(flat, *edges_range, n_bins)
    return _Batch(channel_max, channel_min, channel_mean, counts, edges)


def channel_extremes(rows: np.ndarray, negative_zero: bool) -> tuple[np.ndarray, np.ndarray]:
    """Stands for MCT's ``np.max(rows, axis=-1)`` and ``np.min(rows, axis=-1)`` on rows without NaN.

    ``np.fmax``/``np.fmin`` reduce about five times faster here (numpy 1.26 vectorizes them, not
    the NaN-propagating max and min). Without NaN they find the same extreme values; the one
    choice left to the implementation is which zero wins between -0.0 and +0.0, so where the
    tensor holds a -0.0 MCT's own reductions run."""
    if negative_zero:
        return np.max(rows, axis=-1), np.min(rows, axis=-1)
    return np.fmax.reduce(rows, axis=-1), np.fmin.reduce(rows, axis=-1)


def _fits_fast_path(collector: Any, x: Any, weights: Any) -> bool:
    return (
        weights is None
        and isinstance(x, np.ndarray)
        and x.dtype in _FLOAT_TO_INT
        and x.ndim >= 1
        and x.size > 0
        and collector.mc.axis == collector.mpcc.axis
        and collector.hc._n_bins == collector.weighted_hc._n_bins
    )


def _store(collector: Any, batch: _Batch) -> None:
    """What MCT 2.6.1's four ``update`` methods store, from already computed statistics:
    ``HistogramCollector.update`` appends (counts, edges); ``WeightedHistogramCollector.update``
    with no weights uses weights of ones, whose float64 bin sums are the counts themselves;
    ``MeanCollector.update`` keeps a running sum of per-batch channel means; and
    ``MinMaxPerChannelCollector.update`` keeps [max, min] per channel."""
    collector.hc._histogram_per_iteration.append((batch.counts, batch.edges))
    collector.weighted_hc._histogram_per_iteration.append((batch.counts.astype(np.float64), batch.edges.copy()))
    mean = collector.mc
    mean.i += 1
    mean.current_sum += batch.channel_mean
    mean.current_mean = mean.current_sum / mean.i
    minmax = collector.mpcc
    if minmax.state is None:
        new_max, new_min = batch.channel_max, batch.channel_min
    else:
        new_max = np.maximum(batch.channel_max, minmax.state[:, 0])
        new_min = np.minimum(batch.channel_min, minmax.state[:, 1])
    minmax.state = np.stack([new_max, new_min], axis=-1)


class _Swap:
    """The installed replacements: MCT's originals, the worker pool, and the batch being collected."""

    def __init__(self, update_statistics: Callable, infer: Callable, to_numpy: Callable, pool: ThreadPoolExecutor):
        self.update_statistics = update_statistics
        self.infer = infer
        self.to_numpy = to_numpy
        self.pool = pool
        self.batch = threading.local()

    def update_now(self, collector: Any, x: np.ndarray) -> None:
        batch = batch_statistics(x, collector.mpcc.axis, collector.hc._n_bins)
        if batch is None:
            self.update_statistics(collector, x, None)
        else:
            _store(collector, batch)


_active: _Swap | None = None
_in_use = threading.Lock()  # held while the replacements are installed


def _installed() -> _Swap:
    if _active is None:
        raise RuntimeError("fast_statistics replacement called outside faster_statistics()")
    return _active


def fast_update_statistics(self: Any, x: Any, weights: Any = None) -> None:
    """Stands for ``StatsCollector.update_statistics(x, weights)`` (MCT 2.6.1).

    Equivalent: it stores exactly what MCT's four collector updates store (see ``_store`` and
    ``batch_statistics``). Inside ``ModelCollector.infer`` the work is handed to a worker thread;
    every tensor has its own collector, so the updates of one batch are independent, and
    ``infer`` returns only after all of them finished. Hessian weights and anything outside
    float32/float64 arrays go to MCT's own method."""
    swap = _installed()
    if not _fits_fast_path(self, x, weights):
        swap.update_statistics(self, x, weights)
        return
    pending = getattr(swap.batch, "pending", None)
    if pending is None:
        swap.update_now(self, x)
    else:
        pending.append(swap.pool.submit(swap.update_now, self, x))


def tensor_in_place(self: Any, tensor: Any) -> Any:
    """Stands for ``KerasImplementation.to_numpy(tensor)`` (MCT 2.6.1: ``tf_tensor_to_numpy``).

    Inside ``ModelCollector.infer`` on this thread, where every result goes to a statistics
    update that only reads it, an eager tensor comes back as a view of its own buffer
    (``_numpy()``: the same values, dtype and shape as ``.numpy()``'s copy, the tensor kept alive
    by the view): a batch of 32 through an SSD MobileNetV2 320 is 2.4 GB of outputs, not copied.
    Everywhere else, and for anything but a non-scalar eager tensor, MCT's own conversion runs."""
    swap = _installed()
    if getattr(swap.batch, "pending", None) is not None and isinstance(tensor, _eager_tensor()) and tensor.shape.rank:
        view = tensor._numpy()
        if isinstance(view, np.ndarray):
            return view
    return swap.to_numpy(self, tensor)


def _eager_tensor() -> Any:
    from tensorflow.python.framework.ops import EagerTensor

    return EagerTensor


def infer_then_wait(self: Any, inputs_list: Any) -> Any:
    """Stands for ``ModelCollector.infer(inputs_list)`` (MCT 2.6.1): runs MCT's method unchanged
    and, before returning, waits for the statistics updates it handed to the workers, re-raising
    the first error one of them hit. So when ``infer`` returns, the collectors hold what MCT's
    sequential loop would have stored."""
    swap = _installed()
    pending: list[Future] = []
    swap.batch.pending = pending
    try:
        result = swap.infer(self, inputs_list)
    finally:
        swap.batch.pending = None
        errors = [f.exception() for f in pending]
    first_error = next((e for e in errors if e is not None), None)
    if first_error is not None:
        raise first_error
    return result


# --- the switch -------------------------------------------------------------------------------


def _targets() -> tuple[Any, Any, Any]:
    from model_compression_toolkit.core.common.collectors.statistics_collector import StatsCollector
    from model_compression_toolkit.core.common.model_collector import ModelCollector
    from model_compression_toolkit.core.keras.keras_implementation import KerasImplementation

    return StatsCollector, ModelCollector, KerasImplementation


def replaced_functions() -> dict[str, Callable]:
    """The MCT and numpy functions whose behaviour this module reproduces, by qualified name."""
    from model_compression_toolkit.core.common.collectors import (
        histogram_collector,
        mean_collector,
        min_max_per_channel_collector,
        statistics_collector,
        weighted_histogram_collector,
    )
    from model_compression_toolkit.core.keras import tf_tensor_numpy

    histograms: Any = importlib.import_module("numpy.lib.histograms")

    stats_collector, model_collector, keras_implementation = _targets()
    functions = [
        stats_collector.__init__,
        stats_collector.update_statistics,
        model_collector.infer,
        keras_implementation.to_numpy,
        tf_tensor_numpy.tf_tensor_to_numpy,
        statistics_collector.standardize_tensor,
        histogram_collector.HistogramCollector.__init__,
        histogram_collector.HistogramCollector.update,
        weighted_histogram_collector.WeightedHistogramCollector.update,
        mean_collector.MeanCollector.__init__,
        mean_collector.MeanCollector.update,
        min_max_per_channel_collector.MinMaxPerChannelCollector.__init__,
        min_max_per_channel_collector.MinMaxPerChannelCollector.update,
        histograms.histogram,
        histograms._get_outer_edges,
        histograms._get_bin_edges,
        histograms._unsigned_subtract,
    ]
    return {f"{f.__module__}.{f.__qualname__}": f for f in functions}


def source_hashes() -> dict[str, str]:
    """sha256 of each reproduced function's source, to notice the day MCT or numpy changes it."""
    return {name: hashlib.sha256(inspect.getsource(f).encode()).hexdigest() for name, f in replaced_functions().items()}


def status() -> Status:
    import model_compression_toolkit as mct

    if mct.__version__ != PINNED_MCT_VERSION:
        return Status(
            False,
            f"MCT {mct.__version__} is installed; the fast statistics path was checked "
            f"against MCT {PINNED_MCT_VERSION} only, so MCT's own code runs",
        )
    return Status(
        True,
        f"MCT {mct.__version__}: statistics collected by mctq_job.fast_statistics "
        f"(bit-identical to MCT's own collectors)",
    )


@contextlib.contextmanager
def faster_statistics(workers: int | None = None) -> Iterator[Status]:
    """Inside the block, MCT 2.6.1's statistics collection runs the fast path; on exit MCT's own
    methods are back. With another MCT version nothing is replaced and the Status says why.
    ``workers``: threads for the per-tensor updates (default: the usable CPUs). Not re-entrant:
    a nested or concurrent block runs MCT's own code and says so."""
    current = status()
    if not current.active:
        yield current
        return
    if not _in_use.acquire(blocking=False):
        yield Status(False, "another faster_statistics block is active; MCT's own code runs here")
        return
    try:
        yield from _swapped(workers, current)
    finally:
        _in_use.release()


def _swapped(workers: int | None, current: Status) -> Iterator[Status]:
    global _active
    from .images import usable_cpus

    stats_collector, model_collector, keras_implementation = _targets()
    with ThreadPoolExecutor(max_workers=workers or usable_cpus(), thread_name_prefix="mctq-stats") as pool:
        _active = _Swap(stats_collector.update_statistics, model_collector.infer, keras_implementation.to_numpy, pool)
        stats_collector.update_statistics = fast_update_statistics
        model_collector.infer = infer_then_wait
        keras_implementation.to_numpy = tensor_in_place
        try:
            yield current
        finally:
            stats_collector.update_statistics = _active.update_statistics
            model_collector.infer = _active.infer
            keras_implementation.to_numpy = _active.to_numpy
            _active = None
