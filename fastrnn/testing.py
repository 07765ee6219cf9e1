"""Tolerances and helpers shared by tests and benchmarks (one definition for both)."""
import contextlib
import math
from typing import Callable, Sequence

import torch

# The same-dtype rule, for every floating dtype below float64: our error against an fp64
# oracle at most this many times PyTorch's own error in the same dtype, plus a floor.
SAME_DTYPE_FACTOR = 2.0
# The floor's unit count for a result that no reduction longer than this feeds.
FLOOR_ULPS = 4


def max_abs_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return (actual.detach().double() - expected.detach().double()).abs().max().item() \
        if actual.numel() else 0.0


def rounding_floor(dtype: torch.dtype, scale: float, reduction_length: int = 1) -> float:
    """The error any correct summation order may leave in a result of `dtype` and magnitude
    `scale` fed by reductions of up to `reduction_length` terms: max(4, sqrt(K)) units in
    the last place (eps) at max(scale, 1).

    sqrt(K) is the probabilistic bound of Higham and Mary ("A new approach to probabilistic
    rounding error analysis", SIAM J. Sci. Comput. 41(5), 2019, Thm. 3.1): a length-K sum
    errs by at most about sqrt(K) u sum|terms| with high probability, whatever the order,
    where the worst-case bound is K u. Two correct kernels (a BLAS's blocked sum, a
    kernel's split-K, a sequential loop) may therefore differ by that much even where
    PyTorch's own error happens to be small; the magnitude stands in for sum|terms|.
    """
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return max(float(FLOOR_ULPS), math.sqrt(max(reduction_length, 1))) * eps * max(scale, 1.0)


def baseline_bound(baseline, reference, dtype: torch.dtype, factor: float = SAME_DTYPE_FACTOR,
                   reduction_length: int = 1) -> float:
    """The largest max-abs error the same-dtype rule allows a result of `dtype`: `factor` x
    the error of `baseline` (PyTorch's own computation in that dtype) against `reference`
    (fp64), plus rounding_floor at the reference's largest magnitude."""
    scale = reference.detach().abs().max().item() if reference.numel() else 0.0
    return factor * max_abs_err(baseline, reference) + rounding_floor(dtype, scale, reduction_length)


def assert_within_baseline(actual, baseline, reference, name: str = "tensor",
                           factor: float = SAME_DTYPE_FACTOR, reduction_length: int = 1):
    """The same-dtype rule, for float32 as for float16 and bfloat16: max-abs error of
    `actual` against `reference` (fp64) <= factor x that of `baseline` (PyTorch's own
    computation in actual's dtype) + rounding_floor(dtype, max|reference|, reduction_length).

    A fixed tolerance would test a summation order: two correct fp32 orders can differ by
    more than assert_close's default fp32 tolerance (1e-5 at values near 1), and PyTorch's
    own fp32 error passes 1e-5 at large reductions. This rule scales with the error the
    computation itself incurs (docs/precision.md).
    """
    assert actual.shape == reference.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    err = max_abs_err(actual, reference)
    base = max_abs_err(baseline, reference)
    bound = baseline_bound(baseline, reference, actual.dtype, factor, reduction_length)
    assert math.isfinite(err), f"{name}: non-finite result"
    assert err <= bound, (
        f"{name}: max error {err:.3e} > {factor} x PyTorch's own error {base:.3e} "
        f"(+ floor {bound - factor * base:.1e})")


def _cast(value, dtype: torch.dtype):
    """Floating tensors in `value` (nested in lists, tuples and dicts) cast to `dtype`,
    keeping requires_grad; everything else as it is."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            return value
        return value.detach().to(dtype).requires_grad_(value.requires_grad)
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


def assert_matches_torch(actual: Sequence[torch.Tensor], torch_fn: Callable, inputs: Sequence,
                         names: Sequence[str], reduction_length: int = 1):
    """fastrnn's results `actual` against `torch_fn(*inputs)`, PyTorch's own computation of
    the same quantities, under the same-dtype rule: torch_fn runs on `inputs` cast to float64
    (the oracle) and to each result's dtype (PyTorch's own error). float64 results are held
    to torch.testing.assert_close's defaults. Returns the fp64 oracle's results.

    torch_fn: returns a sequence of tensors matching `actual` (it may differentiate inside).
    reduction_length: the longest reduction feeding any result (rounding_floor).
    """
    expected = list(torch_fn(*_cast(list(inputs), torch.float64)))
    assert len(expected) == len(actual) == len(names), (len(expected), len(actual), len(names))
    baselines = {}
    for name, a, e in zip(names, actual, expected):
        if a.dtype == torch.float64:
            torch.testing.assert_close(a, e, msg=lambda m: f"{name}: {m}")
            continue
        if a.dtype not in baselines:
            baselines[a.dtype] = dict(zip(names, torch_fn(*_cast(list(inputs), a.dtype))))
        assert_within_baseline(a, baselines[a.dtype][name].to(a.device), e, name,
                               reduction_length=reduction_length)
    return expected


def recurrent_reduction_length(T: int, B: int, input_size: int, hidden_size: int, gates: int) -> int:
    """The longest reduction in a recurrent layer and its gradients: a step's pre-activation
    (input_size + hidden_size terms), d_x and d_h (gates x hidden_size), and the weight and
    bias gradients (T x B rows)."""
    return max(input_size + hidden_size, gates * hidden_size, T * B)


@contextlib.contextmanager
def poisoned_empty():
    """Inside the block, torch.empty / empty_like / new_empty return NaN-filled float tensors,
    so an output element a kernel forgets to write shows up as NaN."""
    originals = (torch.empty, torch.empty_like, torch.Tensor.new_empty)

    def poison(t):
        if t.dtype.is_floating_point:
            t.fill_(float("nan"))
        return t

    def empty(*args, **kwargs):
        return poison(originals[0](*args, **kwargs))

    def empty_like(*args, **kwargs):
        return poison(originals[1](*args, **kwargs))

    def new_empty(self, *args, **kwargs):
        return poison(originals[2](self, *args, **kwargs))

    torch.empty, torch.empty_like, torch.Tensor.new_empty = empty, empty_like, new_empty
    try:
        yield
    finally:
        torch.empty, torch.empty_like, torch.Tensor.new_empty = originals
