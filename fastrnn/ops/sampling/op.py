"""Public sampling functions: checks, broadcasting of parameters, backend dispatch.

Every backend module (vectorized: sort-free PyTorch; ext: the C++ sampler; triton: the
fused kernel) provides

    kept_mask(logits, temperature, top_k, top_p, min_p) -> (mask (B, V) bool, status (B,))
    sample(logits, temperature, top_k, top_p, min_p, uniform) -> (tokens (B,) int64, status)

with per-row parameters already checked here: temperature (B,) float32, 0 (greedy) or
>= torch.finfo(torch.float32).tiny, or +inf; top_k (B,) int64 in [1, V] (V disables);
top_p (B,) float64 in (0, 1] (1 disables); min_p (B,) float32 in [0, 1] (0 disables);
uniform (B,) float64 in [0, 1). status is int32 per row (STATUS); a row with a non-zero
status gets token -1 and an all-False mask row, and the call raises ValueError naming
the first such row.

Host synchronisation: none on CUDA tensors. Scalar parameters are checked on the host
before they become tensors; tensor parameters and the status codes are reduced on the
device to a few codes and handed to fastrnn.errors.report, which raises at once on CPU
and defers the check on CUDA (fastrnn.check_errors() waits for it).
"""
import importlib
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from fastrnn import backends, errors
from fastrnn.ops.sampling.reference import probabilities

Param = Union[float, int, Tensor, None]
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
STATUS = {1: "contains NaN", 2: "contains +inf", 3: "has no finite logit (all -inf)"}
# Below this, 1 / T is not representable in float32: such temperatures are greedy.
TINY_TEMPERATURE = torch.finfo(torch.float32).tiny


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


# ---- parameters -------------------------------------------------------------------------

class _Rule:
    """A parameter's valid range, checked on host scalars and on device tensors alike."""

    def __init__(self, name: str, text: str, ok: Callable):
        # ok: a number or a tensor -> bool or bool tensor (written with operators that
        # mean the same on both)
        self.name, self.text, self.ok = name, text, ok

    def check_scalar(self, fn: str, value):
        if not self.ok(value):
            _fail(fn, f"{self.name} must be {self.text}, got {value}")

    def check_tensor(self, fn: str, values: Tensor):
        """Report the first row out of range, without a host sync on CUDA."""
        errors.report_first_row(
            ~self.ok(values), values,
            lambda row, value: f"fastrnn.{fn}: {self.name} must be {self.text}, got {value:g} (row {row})")


# NaN fails every comparison below, so it is rejected by each rule.
_TEMPERATURE = _Rule("temperature", ">= 0 (0 means greedy) or +inf", lambda t: t >= 0)
_TOP_K = _Rule("top_k", ">= 0 (0 or None disables top-k)", lambda k: k >= 0)
_TOP_P = _Rule("top_p", "in (0, 1] (1 disables top-p)", lambda p: (p > 0) & (p <= 1))
_MIN_P = _Rule("min_p", "in [0, 1] (0 disables min-p)", lambda p: (p >= 0) & (p <= 1))


def _per_row(fn: str, rule: _Rule, value: Param, default, B: int, dtype, device,
             integer: bool = False, scalar_map: Callable = lambda v: v,
             tensor_map: Callable = lambda t: t) -> Tensor:
    """A scalar or a (B,) tensor as a checked (B,) tensor of `dtype` on `device`, with
    scalar_map / tensor_map (the same rule) applied after the check."""
    name = rule.name
    if value is None:
        value = default
    if isinstance(value, Tensor):
        if value.dim() == 0:
            value = value.reshape(1).expand(B)
        if value.shape != (B,):
            _fail(fn, f"{name} must be a scalar or have shape ({B},), got {tuple(value.shape)}")
        if value.dtype == torch.bool or value.is_complex():
            _fail(fn, f"{name} must be a real number, got {value.dtype}", TypeError)
        if integer and value.dtype.is_floating_point:
            _fail(fn, f"{name} must be an integer tensor, got {value.dtype}", TypeError)
        rule.check_tensor(fn, value.to(device))
        return tensor_map(value.to(device=device, dtype=dtype))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(fn, f"{name} must be a number or a Tensor, got {type(value).__name__}", TypeError)
    if integer and not isinstance(value, int):
        _fail(fn, f"{name} must be an int, got {value!r}", TypeError)
    rule.check_scalar(fn, value)
    return torch.full((B,), scalar_map(value), dtype=dtype, device=device)


def _parameters(fn: str, logits: Tensor, temperature: Param, top_k: Param, top_p: Param,
                min_p: Param):
    """(temperature, top_k, top_p, min_p) as the backends take them (module docstring)."""
    B, V = logits.shape
    device = logits.device
    # 1 / T overflows float32 below TINY_TEMPERATURE: the limit T -> 0 is the argmax.
    temperature = _per_row(
        fn, _TEMPERATURE, temperature, 1.0, B, torch.float32, device,
        scalar_map=lambda t: 0.0 if t < TINY_TEMPERATURE else t,
        tensor_map=lambda t: torch.where(t < TINY_TEMPERATURE, 0.0, t))
    # 0 disables top-k, like V or more.
    top_k = _per_row(fn, _TOP_K, top_k, 0, B, torch.int64, device, integer=True,
                     scalar_map=lambda k: V if k == 0 else min(k, V),
                     tensor_map=lambda k: torch.where(k == 0, V, k.clamp_max(V)))
    top_p = _per_row(fn, _TOP_P, top_p, 1.0, B, torch.float64, device)
    min_p = _per_row(fn, _MIN_P, min_p, 0.0, B, torch.float32, device)
    return temperature, top_k, top_p, min_p


def report_status(fn: str, status: Tensor):
    """ValueError naming the first row with a non-zero status (deferred on CUDA)."""
    errors.report_first_row(
        status != 0, status,
        lambda row, code: (f"fastrnn.{fn}: logits row {row} {STATUS[int(code)]}; nothing can be "
                           "sampled from it"))


# ---- randomness ---------------------------------------------------------------------------

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


def row_seeds(seed: int, B: int, device) -> Tensor:
    """The per-row seeds (B,) int64 a scalar seed stands for: hash(seed) + row index, so
    rows draw independently and the same seed gives the same draws.

    Raises:
        ValueError: a seed outside int64's range.
    """
    if not -2 ** 63 <= seed < 2 ** 63:
        raise ValueError(f"fastrnn: seed must lie in [-2**63, 2**63), got {seed}")
    # Hashed on the CPU and added as a Python int: copying a host tensor to the GPU would
    # synchronise (no host sync per sampled token).
    base = int(_splitmix64(torch.tensor(seed, dtype=torch.int64)))
    return torch.arange(B, dtype=torch.int64, device=device) + base


def _uniforms(fn: str, B: int, device, generator, seed) -> Tensor:
    if generator is not None and seed is not None:
        _fail(fn, "give a generator or seeds, not both")
    if seed is None:
        if generator is not None and generator.device.type != torch.device(device).type:
            _fail(fn, f"generator is on {generator.device} but logits are on {device}")
        return torch.rand(B, dtype=torch.float64, device=device, generator=generator)
    if isinstance(seed, Tensor):
        if seed.dtype.is_floating_point or seed.dtype == torch.bool or seed.is_complex():
            _fail(fn, f"seed must hold integers, got {seed.dtype}", TypeError)
        if seed.dim() == 0:
            seed = seed.reshape(1).expand(B)
        if seed.shape != (B,):
            _fail(fn, f"seed must be an int or have shape ({B},), got {tuple(seed.shape)}")
        return uniforms_from_seeds(seed.to(device))
    if isinstance(seed, bool) or not isinstance(seed, int):
        _fail(fn, f"seed must be an int or a tensor of ints, got {type(seed).__name__}", TypeError)
    return uniforms_from_seeds(row_seeds(seed, B, device))


def _backend(logits: Tensor, backend: Optional[str]) -> str:
    needs = ("fp64",) if logits.dtype == torch.float64 else ()
    return backends.choose(logits.device.type, "sampling", needs, backend)


# ---- public functions -------------------------------------------------------------------

def sample(logits: Tensor, temperature: Param = 1.0, top_k: Param = None, top_p: Param = None,
           min_p: Param = None, *, generator: Optional[torch.Generator] = None, seed: Param = None,
           backend: Optional[str] = None) -> Tensor:
    """Draw one token per row from softmax(logits / temperature) after top-k, top-p, min-p.

    Filters apply in that order, then the kept tokens are renormalised and one is drawn;
    no row is sorted. Probabilities are exp((l - max) / T) normalised, so no finite
    temperature overflows, and -inf logits always have probability 0.

    Args:
        logits: (B, V) or (V,) float16/bfloat16/float32/float64 tensor.
        temperature: a number or one per row (B,). 0 is greedy (argmax, ties to the
            lowest index); so is every 0 < T < torch.finfo(torch.float32).tiny (about
            1.2e-38), where 1/T is not representable in float32 and the limit T -> 0
            is the argmax. +inf draws uniformly among the tokens with a finite logit.
        top_k: None or 0 (off, as in Hugging Face's generate) or >= 1, an int or (B,)
            integers; keeps j iff fewer than k tokens are strictly more probable.
        top_p: None (off) or in (0, 1]; keeps j iff the top-k survivors strictly more
            probable than j hold less than top_p of their mass (ties kept together).
        min_p: None (off) or in [0, 1]; keeps p_j >= min_p * max(p).
        generator: a torch.Generator on logits' device for the random draw, or
        seed: an int, or (B,) integers. An int gives every row its own reproducible draw,
            derived from (seed, row index) (see row_seeds). A tensor gives row i a draw
            that depends only on seed[i] and that row's logits, whatever else is in the
            batch.
        backend: "triton", "ext" (the C++ sampler), "reference" (the sort-free vectorised
            PyTorch path) or None (automatic, fastrnn.backends).

    Returns:
        (B,) int64 tokens, or a 0-d tensor for 1-D logits.

    Raises:
        TypeError: non-tensor or non-floating logits, non-integer top_k or seed.
        ValueError: logits not 1-D/2-D or with V = 0; a parameter out of range (NaN
            included) or a per-row tensor of the wrong length; a logits row with a NaN, a
            +inf or no finite logit (the message names the first such row). On CUDA,
            checks of tensor values are deferred (fastrnn.check_errors()).

    Example:
        >>> logits = torch.randn(4, 32000)
        >>> tokens = fastrnn.sample(logits, temperature=0.8, top_k=50, top_p=0.9, seed=1234)
    """
    fn = "sample"
    rows = _check_logits(fn, logits)
    params = _parameters(fn, rows, temperature, top_k, top_p, min_p)
    uniform = _uniforms(fn, rows.shape[0], rows.device, generator, seed)
    tokens, status = backend_module(_backend(rows, backend)).sample(rows, *params, uniform)
    report_status(fn, status)
    return tokens.reshape(()) if logits.dim() == 1 else tokens


def prepared_sampler(logits: Tensor, temperature: Param = 1.0, top_k: Param = None,
                     top_p: Param = None, min_p: Param = None, *,
                     backend: Optional[str] = None) -> Callable[[Tensor, Tensor], Tensor]:
    """fastrnn.sample with its parameters checked and converted once, for a loop that draws
    from logits of one shape, dtype and device at every step (fastrnn.generate): returns
    draw(logits (B, V), uniform (B,) float64 in [0, 1)) -> (B,) int64 tokens.

    Same semantics and errors as fastrnn.sample (parameter errors here, logits errors at
    each draw); `logits` only gives the shape, dtype and device.
    """
    fn = "sample"
    rows = _check_logits(fn, logits)
    params = _parameters(fn, rows, temperature, top_k, top_p, min_p)
    run = backend_module(_backend(rows, backend)).sample

    def draw(step_logits: Tensor, uniform: Tensor) -> Tensor:
        tokens, status = run(step_logits, *params, uniform)
        report_status(fn, status)
        return tokens
    return draw


def sampling_mask(logits: Tensor, temperature: Param = 1.0, top_k: Param = None,
                  top_p: Param = None, min_p: Param = None, *,
                  backend: Optional[str] = None) -> Tensor:
    """The kept set of fastrnn.sample's filters: a bool tensor shaped like logits.

    Same arguments, semantics and errors as fastrnn.sample; greedy rows (temperature 0
    or below float32's tiny) keep the argmax alone.

    Example:
        >>> mask = fastrnn.sampling_mask(torch.randn(2, 100), top_k=10, top_p=0.5)
        >>> mask.sum(-1)  # at most 10 tokens kept per row (more only for ties)
    """
    fn = "sampling_mask"
    rows = _check_logits(fn, logits)
    params = _parameters(fn, rows, temperature, top_k, top_p, min_p)
    mask, status = backend_module(_backend(rows, backend)).kept_mask(rows, *params)
    report_status(fn, status)
    return mask.reshape(logits.shape)


def filtered_probs(logits: Tensor, temperature: Param = 1.0, top_k: Param = None,
                   top_p: Param = None, min_p: Param = None, *,
                   backend: Optional[str] = None) -> Tensor:
    """The distribution fastrnn.sample draws from: float32 probabilities shaped like logits,
    zero outside the kept set and renormalised inside it (one-hot on greedy rows).

    The kept set comes from `backend`, the probabilities from reference.probabilities.
    Same arguments and errors as fastrnn.sample.

    Example:
        >>> probs = fastrnn.filtered_probs(torch.randn(2, 100), temperature=0.7, min_p=0.1)
        >>> probs.sum(-1)  # tensor([1., 1.])
    """
    fn = "filtered_probs"
    rows = _check_logits(fn, logits)
    params = _parameters(fn, rows, temperature, top_k, top_p, min_p)
    mask, status = backend_module(_backend(rows, backend)).kept_mask(rows, *params)
    report_status(fn, status)
    kept = torch.where(mask, probabilities(rows, params[0]), 0.0)
    return (kept / kept.sum(-1, keepdim=True)).reshape(logits.shape)
