"""Errors that kernels detect on the device, reported without stalling the stream.

A kernel that finds a problem (a grid barrier that timed out, a logits row with NaN)
writes a small int tensor of codes on the device. Reading it on the host right away
would wait for the GPU on every call (`.item()`, `bool(t)`, `t.nonzero()` all
synchronise) and would forbid CUDA-graph capture. So:

- CPU tensors: the codes are read at once and the error raised from the call itself.
- CUDA tensors: the codes are copied asynchronously into pinned host memory and an event
  is recorded after the copy. Every later `report` call looks, without waiting, at the
  errors whose events have completed and raises the first one found; `check_errors()`
  waits for all of them (a synchronisation point: call it where the program syncs
  anyway, e.g. once per generated token batch or per training step). fastrnn's modules
  and `generate` call it at such points.
- While a CUDA graph is being captured or torch.compile traces, nothing is recorded (the
  graph replays the kernels; check the codes of a replay with your own read if needed),
  except inside `recorded_reports()`, which hands the captured reports to the caller to
  re-issue after each replay (fastrnn.generate's CUDA-graph loop does).

An error is raised once: after it is raised it is forgotten.
"""
from __future__ import annotations

import contextlib
import dataclasses
import struct
import sys
import threading
from typing import Callable, List

import torch

Message = Callable[[List[int]], "str | None"]


@dataclasses.dataclass(eq=False)   # compared by identity: its tensor has no truth value
class _Pending:
    host: torch.Tensor          # pinned copy of the codes
    done: torch.cuda.Event
    message: Message            # host codes -> error message, or None when all is well
    exc_type: type


_pending: List[_Pending] = []
_lock = threading.Lock()
# Reports made while a CUDA graph is captured inside recorded_reports(), per thread.
_recording = threading.local()


@dataclasses.dataclass
class Recorded:
    codes: torch.Tensor         # the captured kernel's codes: rewritten by every replay
    message: Message
    exc_type: type

    def report(self) -> None:
        """Check the codes of the replay just enqueued (deferred, as report does)."""
        report(self.codes, self.message, self.exc_type)


@contextlib.contextmanager
def recorded_reports():
    """Around a CUDA-graph capture: yields a list that collects the reports the captured
    kernels make (normally dropped while capturing). Call each one's `report()` after every
    `graph.replay()` so that the replay's device-side errors are raised as eager calls'."""
    previous = getattr(_recording, "log", None)
    _recording.log = []
    try:
        yield _recording.log
    finally:
        _recording.log = previous


def _raise_if_bad(codes: List[int], message: Message, exc_type: type) -> None:
    text = message(codes)
    if text is not None:
        raise exc_type(text)


def _capturing() -> bool:
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def report(codes: torch.Tensor, message: Message, exc_type: type = RuntimeError) -> None:
    """Raise `exc_type(message(codes))` when `message` finds an error in the codes.

    codes: a small integer tensor (a few elements) written by a kernel. message: takes the
    codes as a host list of ints and returns the error text, or None when there is none.
    On CPU the check happens now; on CUDA it is deferred (see the module docstring), and
    earlier deferred errors that have completed are raised here.
    """
    if codes.device.type != "cuda":
        _raise_if_bad(codes.tolist(), message, exc_type)
        return
    if _capturing():
        log = getattr(_recording, "log", None)
        if log is not None and not torch.compiler.is_compiling():
            log.append(Recorded(codes, message, exc_type))
        return
    # Earlier reports first: this call's own codes are raised at the next call or
    # check_errors(), however fast the GPU finishes them (never by this call).
    _raise_completed(wait=False)
    host = torch.empty(codes.shape, dtype=codes.dtype, pin_memory=True)
    host.copy_(codes, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    with _lock:
        _pending.append(_Pending(host, done, message, exc_type))


def report_first_row(bad: torch.Tensor, values: torch.Tensor, describe: Callable[[int, float], str],
                     exc_type: type = ValueError) -> None:
    """Report the first row where `bad` (R,) bool is True, with that row's entry of
    `values` (R,): exc_type(describe(row, value)), through `report` (at once on CPU,
    deferred on CUDA). The row is found and indexed on the device (indexing with a 0-d
    tensor would read it on the host); the value travels as the bits of a float64."""
    R = bad.shape[0]
    if R == 0 or torch.compiler.is_compiling():  # nothing is read while tracing
        return
    if bad.device.type != "cuda" and not bool(bad.any()):
        return  # off CUDA, reading the flag costs no sync and spares the codes below
    row = torch.where(bad, torch.arange(R, device=bad.device), R).amin().reshape(1)
    value = values.index_select(0, row.clamp_max(R - 1)).double()
    codes = torch.cat([row, value.view(torch.int64)])

    def message(codes: List[int]) -> "str | None":
        if codes[0] == R:
            return None
        return describe(codes[0], struct.unpack("<d", struct.pack("<q", codes[1]))[0])
    report(codes, message, exc_type)


def check_lengths(lengths: "torch.Tensor | None", T: int, op: str) -> None:
    """Report sequence lengths outside [1, T] (fastrnn.functional's rule) as a RuntimeError
    naming `op`, the first bad row and its value, through report_first_row: at once on
    CPU, at the next fastrnn call or check_errors() on CUDA (no host sync).

    fastrnn.functional checks lengths on the host before calling a layer op, except while
    torch.compile traces, where no value can be read; the layer ops call this at run time
    so that a compiled call rejects them too. lengths: (B,) integers, or None."""
    if lengths is None:
        return
    report_first_row((lengths < 1) | (lengths > T), lengths,
                     lambda row, value: f"{op}: lengths must lie in [1, T={T}], got {value:.0f} "
                                        f"at batch row {row}", RuntimeError)


def check_errors() -> None:
    """Wait for every kernel that reported codes and raise the first error among them: the
    Triton kernels' and the CUDA extension's persistent kernels' (whose barrier timeouts
    the extension keeps and otherwise raises at its next call).

    Raises:
        the exception type its reporter chose (RuntimeError for kernel failures,
        ValueError for bad input found on the device), with its message.
    """
    _raise_completed(wait=True)
    _check_extension()


def _check_extension() -> None:
    """The CUDA extension's pending barrier reports, when a CUDA build of it is loaded and
    CUDA has been used (the op exists only in CUDA builds)."""
    if "fastrnn._C" not in sys.modules or not torch.cuda.is_initialized():
        return
    if hasattr(torch.ops.fastrnn, "ext_check_barrier_timeouts"):
        torch.ops.fastrnn.ext_check_barrier_timeouts()


def _raise_completed(wait: bool) -> None:
    with _lock:
        ready = [p for p in _pending if wait or p.done.query()]
        for p in ready:
            _pending.remove(p)
    for p in ready:
        if wait:
            p.done.synchronize()
        _raise_if_bad(p.host.tolist(), p.message, p.exc_type)
