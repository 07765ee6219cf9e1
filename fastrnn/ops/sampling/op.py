"""Public sampling functions: checks, broadcasting of parameters, backend dispatch.

Every backend module (vectorized for CPU tensors, triton for CUDA tensors) provides

    kept_mask(logits, temperature, top_k, top_p, min_p) -> (mask (B, V) bool, status (B,))
    sample(logits, temperature, top_k, top_p, min_p, uniform) -> (tokens (B,) int64, status)

with per-row parameters already checked: temperature (B,) float32 >= 0, top_k (B,) int64
in [1, V] (V disables), top_p (B,) float64 in (0, 1] (1 disables), min_p (B,) float32 in
[0, 1] (0 disables), uniform (B,) float64 in [0, 1). status is int32 per row, see STATUS.
"""
import importlib
from typing import Optional, Union

import torch
from torch import Tensor

from fastrnn import backends
from fastrnn.ops.softmax.op import softmax

Param = Union[float, int, Tensor, None]
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
STATUS = {1: "contains NaN", 2: "has no finite maximum (all -inf, or a +inf logit)"}


def _fail(fn: str, message: str, exc=ValueError):
    raise exc(f"fastrnn.{fn}: {message}")


def backend_module(name: str):
    module = "vectorized" if name == "reference" else name
    return importlib.import_module(f"fastrnn.ops.sampling.{module}")


def _check_logits(fn: str, logits: Tensor) -> Tensor:
    if not isinstance(logits, Tensor):
        _fail(fn, f"logits must be a Tensor, got {type(logits).__name__}", TypeError)
    if logits.dim() not in (1, 2):
        _fail(fn, f"logits must be 1-D (V,) or 2-D (B, V), got {logits.dim()}-D")
    if logits.dtype not in FLOAT_DTYPES:
        _fail(fn, f"logits must be float16, bfloat16, float32 or float64, got {logits.dtype}", TypeError)
    if logits.shape[-1] == 0:
        _fail(fn, "logits must have at least one token (V >= 1)")
    return logits.reshape(1, -1) if logits.dim() == 1 else logits


def _per_row(fn: str, name: str, value: Param, default, B: int, dtype, device) -> Tensor:
    """A scalar or a (B,) tensor as a (B,) tensor of `dtype` on `device`."""
    if value is None:
        value = default
    if isinstance(value, Tensor):
        if value.dim() == 0:
            value = value.reshape(1).expand(B)
        if value.shape != (B,):
            _fail(fn, f"{name} must be a scalar or have shape ({B},), got {tuple(value.shape)}")
        if value.dtype == torch.bool or value.is_complex():
            _fail(fn, f"{name} must be a real number, got {value.dtype}", TypeError)
        return value.to(device=device, dtype=dtype)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(fn, f"{name} must be a number or a Tensor, got {type(value).__name__}", TypeError)
    return torch.full((B,), value, dtype=dtype, device=device)


def _check_range(fn: str, name: str, t: Tensor, low, high, low_open: bool, rule: str):
    if torch.compiler.is_compiling() or t.numel() == 0:
        return
    bad = torch.isnan(t) if t.dtype.is_floating_point else torch.zeros_like(t, dtype=torch.bool)
    bad |= (t <= low) if low_open else (t < low)
    if high is not None:
        bad |= t > high
    if bool(bad.any()):
        _fail(fn, f"{name} must be {rule}, got {t[bad][0].item()}")


def _parameters(fn: str, logits: Tensor, temperature: Param, top_k: Param, top_p: Param,
                min_p: Param):
    B, V = logits.shape
    device = logits.device
    if isinstance(top_k, Tensor) and (top_k.dtype.is_floating_point or top_k.dtype == torch.bool):
        _fail(fn, f"top_k must be an integer tensor, got {top_k.dtype}", TypeError)
    if isinstance(top_k, float):
        _fail(fn, f"top_k must be an int, got {top_k!r}", TypeError)
    temperature = _per_row(fn, "temperature", temperature, 1.0, B, torch.float32, device)
    _check_range(fn, "temperature", temperature, 0.0, None, False, ">= 0 (0 means greedy)")
    top_k = _per_row(fn, "top_k", top_k, V, B, torch.int64, device)
    _check_range(fn, "top_k", top_k, 1, None, False, ">= 1 (None disables top-k)")
    top_p = _per_row(fn, "top_p", top_p, 1.0, B, torch.float64, device)
    _check_range(fn, "top_p", top_p, 0.0, 1.0, True, "in (0, 1] (1 disables top-p)")
    min_p = _per_row(fn, "min_p", min_p, 0.0, B, torch.float32, device)
    _check_range(fn, "min_p", min_p, 0.0, 1.0, False, "in [0, 1] (0 disables min-p)")
    return temperature, top_k.clamp_max(V), top_p, min_p


def _raise_on_status(fn: str, status: Tensor):
    if torch.compiler.is_compiling():
        return
    bad = status.nonzero()
    if bad.numel():
        row = int(bad[0, 0])
        _fail(fn, f"logits row {row} {STATUS[int(status[row])]}; nothing can be sampled from it")


def _splitmix64(x: Tensor) -> Tensor:
    """SplitMix64 finaliser on int64 tensors (wrapping arithmetic): a well-mixed hash."""
    def logical_shift(v, s):
        return (v >> s) & ((1 << (64 - s)) - 1)
    x = x + _signed(0x9E3779B97F4A7C15)
    x = (x ^ logical_shift(x, 30)) * _signed(0xBF58476D1CE4E5B9)
    x = (x ^ logical_shift(x, 27)) * _signed(0x94D049BB133111EB)
    return x ^ logical_shift(x, 31)


def _signed(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


def uniforms_from_seeds(seed: Tensor) -> Tensor:
    """One uniform float64 in [0, 1) per row, a pure function of that row's integer seed."""
    top53 = (_splitmix64(seed.to(torch.int64)) >> 11) & ((1 << 53) - 1)
    return top53.double() * 2.0 ** -53


def _uniforms(fn: str, B: int, device, generator, seed) -> Tensor:
    if generator is not None and seed is not None:
        _fail(fn, "give a generator or seeds, not both")
    if seed is None:
        if generator is not None and generator.device.type != torch.device(device).type:
            _fail(fn, f"generator is on {generator.device} but logits are on {device}")
        return torch.rand(B, dtype=torch.float64, device=device, generator=generator)
    if isinstance(seed, Tensor) and (seed.dtype.is_floating_point or seed.dtype == torch.bool):
        _fail(fn, f"seed must hold integers, got {seed.dtype}", TypeError)
    return uniforms_from_seeds(_per_row(fn, "seed", seed, 0, B, torch.int64, device))


def _backend(logits: Tensor, backend: Optional[str]) -> str:
    needs = ("fp64",) if logits.dtype == torch.float64 else ()
    return backends.choose(logits.device.type, "sampling", needs, backend)


def sample(logits: Tensor, temperature: Param = 1.0, top_k: Param = None, top_p: Param = None,
           min_p: Param = None, *, generator: Optional[torch.Generator] = None, seed: Param = None,
           backend: Optional[str] = None) -> Tensor:
    """Draw one token per row from softmax(logits / temperature) after top-k, top-p, min-p.

    Filters apply in that order, then the kept tokens are renormalised and one is drawn;
    no row is sorted. temperature = 0 is greedy (argmax, ties to the lowest index).

    Args:
        logits: (B, V) or (V,) float tensor. NaN, +inf or all -inf rows raise.
        temperature: >= 0, a number or one per row (B,).
        top_k: None (off) or >= 1; keeps j iff fewer than k tokens are strictly more probable.
        top_p: None (off) or in (0, 1]; keeps j iff the top-k survivors strictly more
            probable than j hold less than top_p of their mass (ties kept together).
        min_p: None (off) or in [0, 1]; keeps p_j >= min_p * max(p).
        generator: a torch.Generator on logits' device for the random draw, or
        seed: an int or (B,) integers: one uniform per row derived from its seed, so the
            same seed and logits give the same token.
        backend: "triton", "reference" (the sort-free vectorised PyTorch path) or None.

    Returns:
        (B,) int64 tokens, or a 0-d tensor for 1-D logits.

    Example:
        >>> logits = torch.randn(4, 32000)
        >>> tokens = fastrnn.sample(logits, temperature=0.8, top_k=50, top_p=0.9, seed=1234)
    """
    fn = "sample"
    rows = _check_logits(fn, logits)
    params = _parameters(fn, rows, temperature, top_k, top_p, min_p)
    uniform = _uniforms(fn, rows.shape[0], rows.device, generator, seed)
    tokens, status = backend_module(_backend(rows, backend)).sample(rows, *params, uniform)
    _raise_on_status(fn, status)
    return tokens.reshape(()) if logits.dim() == 1 else tokens


def sampling_mask(logits: Tensor, temperature: Param = 1.0, top_k: Param = None,
                  top_p: Param = None, min_p: Param = None, *,
                  backend: Optional[str] = None) -> Tensor:
    """The kept set of fastrnn.sample's filters: a bool tensor shaped like logits.

    Same arguments and semantics as fastrnn.sample; greedy rows (temperature 0) keep the
    argmax alone.

    Example:
        >>> mask = fastrnn.sampling_mask(torch.randn(2, 100), top_k=10, top_p=0.5)
        >>> mask.sum(-1)  # at most 10 tokens kept per row (more only for ties)
    """
    fn = "sampling_mask"
    rows = _check_logits(fn, logits)
    params = _parameters(fn, rows, temperature, top_k, top_p, min_p)
    mask, status = backend_module(_backend(rows, backend)).kept_mask(rows, *params)
    _raise_on_status(fn, status)
    return mask.reshape(logits.shape)


def filtered_probs(logits: Tensor, temperature: Param = 1.0, top_k: Param = None,
                   top_p: Param = None, min_p: Param = None, *,
                   backend: Optional[str] = None) -> Tensor:
    """The distribution fastrnn.sample draws from: float32 probabilities shaped like logits,
    zero outside the kept set and renormalised inside it (one-hot on greedy rows).

    Example:
        >>> probs = fastrnn.filtered_probs(torch.randn(2, 100), temperature=0.7, min_p=0.1)
        >>> probs.sum(-1)  # tensor([1., 1.])
    """
    mask = sampling_mask(logits, temperature, top_k, top_p, min_p, backend=backend)
    rows = _check_logits("filtered_probs", logits)
    t = _per_row("filtered_probs", "temperature", temperature, 1.0, rows.shape[0], torch.float32,
                 rows.device)
    t = torch.where(t > 0, t, torch.ones_like(t))
    probs = softmax(rows, t, backend=backend).float().reshape(mask.shape)
    kept = torch.where(mask, probs, 0.0)
    return kept / kept.sum(-1, keepdim=True)
