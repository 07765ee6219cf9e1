"""The one place that decides which implementation runs an op.

Backends:
  "triton"    fused Triton kernels (CUDA tensors; CPU tensors only under TRITON_INTERPRET=1)
  "ext"       the compiled C++/CUDA extension fastrnn._C
  "reference" plain PyTorch (always available)

Automatic choice: CUDA tensors -> triton, else ext, else reference;
CPU tensors -> ext, else reference. Triton runs on CPU tensors only when forced, since
the interpreter is a testing tool, not a fast path.

A backend is forced with the keyword ``backend=`` of the functional API or the
environment variable ``FASTRNN_BACKEND``. A forced backend that cannot run raises an
error naming what is missing; it never falls back silently.
"""
from __future__ import annotations

import functools
import importlib
import os
from typing import Iterable, Optional

import torch

BACKENDS = ("triton", "ext", "reference")
ENV_VAR = "FASTRNN_BACKEND"

# Optional features each backend supports per op. An automatic choice skips a backend
# lacking a feature the call needs; a forced one raises.
#   "proj"    LSTM with proj_size > 0
#   "lengths" per-sequence lengths (variable-length batches)
#   "fp64"    float64 inputs
FEATURES = {
    "reference": {"lstm": {"proj", "lengths", "fp64"}, "gru": {"lengths", "fp64"},
                  "rnn": {"lengths", "fp64"}, "softmax": {"fp64"}, "sampling": {"fp64"}},
    "triton": {"lstm": {"lengths"}, "gru": {"lengths"}, "rnn": {"lengths"}},
    "ext": {"lstm": {"proj", "lengths", "fp64"}, "gru": {"lengths", "fp64"}, "sampling": {"fp64"},
            "rnn": {"lengths", "fp64"}},
}


def assume_constant_result(fn):
    """torch.compiler.assume_constant_result without importing torch._dynamo.

    torch's decorator imports torch._dynamo (about 2 s) only to set the marker below, which
    Dynamo reads when it traces a call to `fn`; setting it ourselves keeps `import fastrnn`
    free of Dynamo. tests/test_backends.py checks that torch's decorator sets nothing else.
    """
    fn._dynamo_marked_constant = True
    return fn


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    try:
        importlib.import_module("triton")
        return True
    except ImportError:
        return False


@functools.lru_cache(maxsize=None)
def ext_module():
    """The compiled extension, or None when it was not built."""
    try:
        return importlib.import_module("fastrnn._C")
    except ImportError:
        return None


@functools.lru_cache(maxsize=None)  # asked on every call of a small op (sampling)
def ext_available(device_type: str, op: str = "lstm") -> bool:
    if ext_module() is None:
        return False
    name = f"fastrnn::ext_{op}_forward"
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(name, key)
    except RuntimeError:  # the extension defines no such op (e.g. softmax, sampling)
        return False


def _why_unavailable(backend: str, device_type: str, op: str) -> Optional[str]:
    """None when `backend` can run `op` on `device_type`, else the reason."""
    if backend == "reference":
        return None
    if backend == "triton":
        if not triton_importable():
            return "the triton package is not installed"
        if device_type == "cuda":
            return None
        if device_type == "cpu" and interpreter_enabled():
            return None
        return (f"Triton kernels need CUDA tensors (got {device_type}); on CPU they run only "
                "under the interpreter (set TRITON_INTERPRET=1 before importing fastrnn)")
    if backend == "ext":
        if ext_module() is None:
            return ("the compiled extension fastrnn._C is not built "
                    "(pip install --no-build-isolation -e .)")
        if not ext_available(device_type, op):
            return f"the extension fastrnn._C has no {device_type} kernel for {op}"
        return None
    return f"unknown backend {backend!r}; choose one of {BACKENDS}"


def _missing_features(backend: str, op: str, needs: Iterable[str]) -> list:
    have = FEATURES.get(backend, {}).get(op, set())
    return sorted(set(needs) - have)


def requested_backend(backend: Optional[str]) -> Optional[str]:
    """The keyword if given, else the environment variable, else None (automatic)."""
    if backend is None:
        backend = os.environ.get(ENV_VAR) or None
    if backend in (None, "auto"):
        return None
    if backend not in BACKENDS:
        raise ValueError(f"fastrnn: unknown backend {backend!r}; choose one of {BACKENDS} or 'auto'")
    return backend


@assume_constant_result
def choose(device_type: str, op: str, needs: tuple = (), backend: Optional[str] = None) -> str:
    """Pick the backend for `op` ("lstm", "gru", ...) on `device_type` ("cpu", "cuda")."""
    forced = requested_backend(backend)
    if forced is not None:
        why = _why_unavailable(forced, device_type, op)
        missing = _missing_features(forced, op, needs)
        if why is None and missing:
            why = f"it does not support {', '.join(missing)} for {op}"
        if why is not None:
            raise RuntimeError(f"fastrnn: backend {forced!r} was requested but cannot run: {why}")
        return forced
    order = ("triton", "ext", "reference") if device_type == "cuda" else ("ext", "reference")
    for candidate in order:
        if _why_unavailable(candidate, device_type, op) is None and not _missing_features(candidate, op, needs):
            return candidate
    return "reference"
