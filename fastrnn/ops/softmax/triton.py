"""Triton softmax / log-softmax with temperature, and the row statistics the sampling
kernels share with it.

Probabilities are p = exp((x - M) / t) / S with M = max(x) and S = sum(exp((x - M) / t)):
the max is subtracted before dividing by t, so a tiny t never overflows; the max itself
gives exp(0) = 1 whatever t is (so S >= 1 and tiny t never gives NaN); a -inf logit gives
p = 0 also at t = +inf (where (-inf - M) / inf would be NaN), so t = +inf is the uniform
distribution over the finite logits. A +inf logit makes M = +inf: the +inf entries share
the mass equally, the others get 0. NaN logits are left out of M and S and give NaN.

Bit-for-bit agreement with sampling. S is an exact sum: every term exp((x - M) / t) is
truncated to a multiple of 2^-F (F = 62 - V.bit_length(), so the int64 total cannot
overflow) and the terms are added as int64, which is associative. M is a max, also
order-free. So M, S and every p = exp(...) / S depend only on the row, not on how the row
is split across programs, on BLOCK, num_warps or the input dtype's load layout:
fastrnn.softmax and fastrnn.sample / fastrnn.sampling_mask (fastrnn.ops.sampling.triton,
which uses the same launches and the same `probs`) see identical float32 probabilities on
the GPU and under the interpreter. The price is a separate pass for the max (the row is
read three times: max, sum, write) instead of an online max-and-sum.

Launch plan (plan()): a row is split across `programs_per_row` programs, chosen from B
and the SM count so that small batches still fill the GPU; passes are separate launches
(the launch boundary is the only barrier between programs, nothing spins). Per-program
partial results live in a small workspace (RowStats). No launcher reads a device value
on the host, and the plan depends only on shapes, dtypes and the device, so calls can be
captured in a CUDA graph.

Verified only statically (no GPU here): register use, spills and shared memory of the
compiled kernels (static_configs() lists them). The bit-for-bit agreement on a GPU
follows from the construction (both compile the same `probs` arithmetic; M and S are
order-free) but has only run under the interpreter; the speed of the split is unmeasured.
"""
import dataclasses
import functools
from typing import Iterator, Optional

import torch
import triton
import triton.language as tl

from fastrnn.backends import interpreter_enabled

BLOCK_MAX = 1024            # tile width along V on a GPU
INTERPRETER_BLOCK = 64      # on CPU tensors (the interpreter): tiny rows still split
MAX_PARTS = 256             # programs per row at most (one vector of partials)
PROGRAMS_PER_SM = 2         # launch about this many programs per SM in total
NUM_WARPS = 4


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a (B, V) problem is split: `parts` programs per row, each owning `chunk`
    consecutive tokens (a multiple of `block`, the tile width)."""
    B: int
    V: int
    parts: int
    chunk: int
    block: int
    num_warps: int = NUM_WARPS

    @property
    def grid(self):
        return (self.B, self.parts)

    @property
    def sum_one(self) -> float:
        """2^F, the fixed-point unit of S's terms (S <= V, so V * 2^F < 2^62)."""
        return float(2 ** (62 - self.V.bit_length()))


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 under the interpreter: tiny work)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def plan(B: int, V: int, device: torch.device, programs_per_row: Optional[int] = None,
         sms: Optional[int] = None) -> Plan:
    """The launch plan for B rows of V tokens: about PROGRAMS_PER_SM programs per SM in
    total, at most MAX_PARTS and at most one per tile per row. `programs_per_row` forces
    the split (tests); `sms` replaces the device's SM count (static checks)."""
    device = torch.device(device)
    widest = BLOCK_MAX if device.type == "cuda" else INTERPRETER_BLOCK
    block = min(widest, triton.next_power_of_2(V))
    blocks = triton.cdiv(V, block)
    if programs_per_row is None:
        sms = sm_count(device) if sms is None else sms
        programs_per_row = triton.cdiv(PROGRAMS_PER_SM * sms, max(B, 1))
    parts = max(1, min(programs_per_row, blocks, MAX_PARTS))
    blocks_per_part = triton.cdiv(blocks, parts)
    return Plan(B, V, triton.cdiv(blocks, blocks_per_part), blocks_per_part * block, block)


@dataclasses.dataclass
class RowStats:
    """Per-program partials (B, parts) of the row statistics: max of x (NaN left out),
    first index of that max, flags (1: a NaN, 2: a +inf) and the int64 fixed-point sum
    of exp((x - M) / t). The kernels reduce them per row with row_max / row_sum."""
    part_max: torch.Tensor
    part_arg: torch.Tensor
    part_flag: torch.Tensor
    part_sum: torch.Tensor

    @staticmethod
    def empty(p: Plan, device) -> "RowStats":
        shape = (p.B, p.parts)
        return RowStats(torch.empty(shape, dtype=torch.float32, device=device),
                        torch.empty(shape, dtype=torch.int32, device=device),
                        torch.empty(shape, dtype=torch.int32, device=device),
                        torch.empty(shape, dtype=torch.int64, device=device))


# ---- shared @triton.jit helpers ------------------------------------------------------------

@triton.jit
def scaled_logit(x, t, M):
    """(x - M) / t in float32 for logits x (any float dtype) and t in (0, +inf], with the
    limits spelled out: exactly 0 at the max whatever t is; -inf at -inf logits; where
    x - M is -inf (it overflowed, or M = +inf) the limit is -inf, except for a finite x
    below a finite M at t = +inf, where it is 0 (the uniform limit; -inf / inf is NaN).
    NaN at NaN."""
    x = x.to(tl.float32)
    d = x - M
    z = tl.where(x == M, 0.0, d / t)
    # (tl.where, not &, between the scalar and the block: the interpreter rejects that &)
    uniform = tl.where((t == float("inf")) & (M != float("inf")), x != float("-inf"), False)
    z = tl.where(d == float("-inf"), tl.where(uniform, 0.0, float("-inf")), z)
    return tl.where(x == float("-inf"), float("-inf"), z)


@triton.jit
def scaled_exp(x, t, M):
    """exp((x - M) / t) in float32 (see scaled_logit): in [0, 1], 1 at the max."""
    return tl.exp(scaled_logit(x, t, M))


@triton.jit
def probs(x, t, M, S):
    """Probabilities of logits x given the row's max M and normaliser S (float32)."""
    return scaled_exp(x, t, M) / S


@triton.jit
def row_max(part_max_ptr, part_arg_ptr, part_flag_ptr, row, parts, PARTS: tl.constexpr):
    """Reduce a row's partials: max M (float32), first argmax (int32), and status
    (int32: 0 ok, 1 a NaN, 2 a +inf, 3 no finite logit)."""
    i = tl.arange(0, PARTS)
    inside = i < parts
    base = row * parts
    m = tl.load(part_max_ptr + base + i, mask=inside, other=float("-inf"))
    M = tl.max(m, axis=0)
    arg = tl.load(part_arg_ptr + base + i, mask=inside, other=2147483647)
    argmax = tl.min(tl.where(inside & (m == M), arg, 2147483647), axis=0)
    flag = tl.load(part_flag_ptr + base + i, mask=inside, other=0)
    nan = tl.max(flag & 1, axis=0) > 0
    pos_inf = tl.max(flag & 2, axis=0) > 0
    status = tl.where(nan, 1, tl.where(pos_inf, 2, tl.where(M == float("-inf"), 3, 0)))
    return M, argmax, status


@triton.jit
def row_sum(part_sum_ptr, row, parts, sum_ulp, PARTS: tl.constexpr):
    """S of a row: the exact int64 total of its partials, rounded once to float32."""
    i = tl.arange(0, PARTS)
    total = tl.sum(tl.load(part_sum_ptr + row * parts + i, mask=i < parts, other=0), axis=0)
    return total.to(tl.float32) * sum_ulp


# ---- kernels ------------------------------------------------------------------------------

@triton.jit
def _max_kernel(x_ptr, stride, V, chunk, part_max_ptr, part_arg_ptr, part_flag_ptr,
                BLOCK: tl.constexpr):
    """Partials of one program: max of its chunk (NaN left out), first index of it, flags."""
    row, part = tl.program_id(0), tl.program_id(1)
    parts = tl.num_programs(1)
    row_ptr = x_ptr + row.to(tl.int64) * stride
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    first = tl.full([BLOCK], 2147483647, tl.int32)
    flag = tl.zeros([BLOCK], tl.int32)
    for start in range(part * chunk, part * chunk + chunk, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        flag |= tl.where(x != x, 1, 0) | tl.where(x == float("inf"), 2, 0)
        x = tl.where(x != x, float("-inf"), x)
        first = tl.where(x > m, offs, first)  # strictly greater: each lane keeps its first max
        m = tl.maximum(m, x)
    M = tl.max(m, axis=0)
    out = row * parts + part
    tl.store(part_max_ptr + out, M)
    tl.store(part_arg_ptr + out, tl.min(tl.where(m == M, first, 2147483647), axis=0))
    tl.store(part_flag_ptr + out, tl.max(flag & 1, axis=0) | tl.max(flag & 2, axis=0))


@triton.jit
def _sum_kernel(x_ptr, stride, V, chunk, t_ptr, part_max_ptr, part_arg_ptr, part_flag_ptr,
                part_sum_ptr, sum_one, PARTS: tl.constexpr, BLOCK: tl.constexpr):
    """Partial S of one program: its terms exp((x - M) / t) as int64 multiples of
    1 / sum_one, summed exactly (NaN terms left out)."""
    row, part = tl.program_id(0), tl.program_id(1)
    parts = tl.num_programs(1)
    row_ptr = x_ptr + row.to(tl.int64) * stride
    M, _, _ = row_max(part_max_ptr, part_arg_ptr, part_flag_ptr, row, parts, PARTS)
    t = tl.load(t_ptr + row)
    acc = tl.zeros([BLOCK], tl.int64)
    for start in range(part * chunk, part * chunk + chunk, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        e = scaled_exp(tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")), t, M)
        acc += tl.where(e == e, (e * sum_one).to(tl.int64), 0)
    tl.store(part_sum_ptr + row * parts + part, tl.sum(acc, axis=0))


@triton.jit
def _softmax_fwd_kernel(x_ptr, stride_x, y_ptr, stride_y, V, chunk, t_ptr, part_max_ptr,
                        part_arg_ptr, part_flag_ptr, part_sum_ptr, sum_ulp, LOG: tl.constexpr,
                        PARTS: tl.constexpr, BLOCK: tl.constexpr):
    """y = p (or log p, LOG) of this program's chunk, from the row's reduced partials."""
    row, part = tl.program_id(0), tl.program_id(1)
    parts = tl.num_programs(1)
    x_row = x_ptr + row.to(tl.int64) * stride_x
    y_row = y_ptr + row.to(tl.int64) * stride_y
    M, _, _ = row_max(part_max_ptr, part_arg_ptr, part_flag_ptr, row, parts, PARTS)
    S = row_sum(part_sum_ptr, row, parts, sum_ulp, PARTS)
    t = tl.load(t_ptr + row)
    log_S = tl.log(S)
    for start in range(part * chunk, part * chunk + chunk, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + offs, mask=offs < V, other=0.0)
        if LOG:
            y = scaled_logit(x, t, M) - log_S
        else:
            y = probs(x, t, M, S)
        tl.store(y_row + offs, y.to(y_ptr.dtype.element_ty), mask=offs < V)


@triton.jit
def _softmax_bwd_kernel(dy_ptr, y_ptr, t_ptr, dx_ptr, V, LOG: tl.constexpr, BLOCK: tl.constexpr):
    # softmax:      dx = y * (dy - sum(dy * y)) / t
    # log-softmax:  dx = (dy - exp(y) * sum(dy)) / t
    row = tl.program_id(0).to(tl.int64)
    base = row * V
    t = tl.load(t_ptr + row)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        dy = tl.load(dy_ptr + base + offs, mask=offs < V, other=0.0).to(tl.float32)
        if LOG:
            acc += dy
        else:
            acc += dy * tl.load(y_ptr + base + offs, mask=offs < V, other=0.0).to(tl.float32)
    total = tl.sum(acc, axis=0)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        dy = tl.load(dy_ptr + base + offs, mask=offs < V, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + base + offs, mask=offs < V, other=0.0).to(tl.float32)
        if LOG:
            dx = (dy - tl.exp(y) * total) / t
        else:
            dx = y * (dy - total) / t
        tl.store(dx_ptr + base + offs, dx.to(dx_ptr.dtype.element_ty), mask=offs < V)


# ---- launchers ----------------------------------------------------------------------------

def row_statistics(x: torch.Tensor, temperature: torch.Tensor, p: Plan) -> RowStats:
    """Launch the max and sum passes over x (B, V) (unit stride along V) with per-row
    temperature (B,) float32; returns the partials. Two launches, no host sync."""
    stats = RowStats.empty(p, x.device)
    _max_kernel[p.grid](x, x.stride(0), p.V, p.chunk, stats.part_max, stats.part_arg,
                        stats.part_flag, BLOCK=p.block, num_warps=p.num_warps)
    _sum_kernel[p.grid](x, x.stride(0), p.V, p.chunk, temperature, stats.part_max,
                        stats.part_arg, stats.part_flag, stats.part_sum, p.sum_one,
                        PARTS=MAX_PARTS, BLOCK=p.block, num_warps=p.num_warps)
    return stats


def forward(x: torch.Tensor, temperature: torch.Tensor, log: bool,
            programs_per_row: Optional[int] = None) -> torch.Tensor:
    """softmax (or log_softmax) of x (R, V), unit stride along V, with temperature (R,)
    float32 > 0 (+inf allowed); returns y (R, V) in x's dtype. Three launches."""
    R, V = x.shape
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if R == 0 or V == 0:
        return y
    p = plan(R, V, x.device, programs_per_row)
    # Triton launches on the current device and its stream: make them x's.
    with torch.cuda.device_of(x):
        stats = row_statistics(x, temperature, p)
        _softmax_fwd_kernel[p.grid](x, x.stride(0), y, y.stride(0), V, p.chunk, temperature,
                                    stats.part_max, stats.part_arg, stats.part_flag,
                                    stats.part_sum, 1.0 / p.sum_one, LOG=log, PARTS=MAX_PARTS,
                                    BLOCK=p.block, num_warps=p.num_warps)
    return y


def backward(grad: torch.Tensor, y: torch.Tensor, temperature: torch.Tensor,
             log: bool) -> torch.Tensor:
    """grad, y (R, V) contiguous; one program per row."""
    R, V = y.shape
    dx = torch.empty_like(y)
    if R:
        block = min(256 if interpreter_enabled() else 4096, triton.next_power_of_2(V))
        with torch.cuda.device_of(y):   # Triton launches on the current device
            _softmax_bwd_kernel[(R,)](grad, y, temperature, dx, V, LOG=log, BLOCK=block,
                                      num_warps=NUM_WARPS if interpreter_enabled() else 8)
    return dx


# ---- static check hook --------------------------------------------------------------------

STATIC_B = (1, 32, 256)
STATIC_V = (32000, 128256)
STATIC_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
H200_SMS = 132


def stride_args(p: Plan) -> dict:
    """The integer arguments every row kernel takes, as the launcher passes them (rows
    are contiguous in the static shapes, so the row stride is V)."""
    return {"V": p.V, "chunk": p.chunk}


def stats_configs(p: Plan, dtype: str) -> Iterator[dict]:
    """The max and sum launches of row_statistics for plan p and logits type dtype."""
    parts = {"part_max_ptr": "*fp32", "part_arg_ptr": "*i32", "part_flag_ptr": "*i32"}
    yield {"kernel": _max_kernel, "name": "max",
           "args": {"x_ptr": f"*{dtype}", "stride": p.V, **stride_args(p), **parts},
           "constexprs": {"BLOCK": p.block}}
    yield {"kernel": _sum_kernel, "name": "sum",
           "args": {"x_ptr": f"*{dtype}", "stride": p.V, **stride_args(p), "t_ptr": "*fp32",
                    **parts, "part_sum_ptr": "*i64", "sum_one": "fp32"},
           "constexprs": {"PARTS": MAX_PARTS, "BLOCK": p.block}}


def static_shapes() -> Iterator[tuple]:
    """(B, V, dtype name, Plan) for every shape the static check covers, on an H200."""
    for V in STATIC_V:
        for B in STATIC_B:
            for name in STATIC_DTYPES:
                yield B, V, name, plan(B, V, torch.device("cuda"), sms=H200_SMS)


def dedupe(configs: Iterator[dict]) -> Iterator[dict]:
    """Keep the first of configurations that compile identically: same kernel,
    constexprs, warps, stages, argument types and run-time specialisation of integers
    (== 1, multiple of 16). Later duplicates add their shape to the first's row["shapes"]."""
    seen = {}
    for config in configs:
        key = (id(config["kernel"]), tuple(sorted(config["constexprs"].items())),
               config["num_warps"], config["num_stages"],
               tuple((k, _specialisation(v)) for k, v in config["args"].items()))
        shape = {k: config["row"][k] for k in ("B", "V", "dtype")}
        if key in seen:
            seen[key]["row"]["shapes"].append(shape)
            continue
        config["row"]["shapes"] = [shape]
        seen[key] = config
        yield config


def _specialisation(value):
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    return "1" if value == 1 else ("d16" if value % 16 == 0 else "int")


def static_configs() -> Iterator[dict]:
    """One dict per distinct compiled configuration of the softmax forward launches for
    B in {1, 32, 256} x V in {32000, 128256} x {fp16, bf16, fp32} on an H200 (132 SMs):
    {"kernel", "args", "constexprs", "num_warps", "num_stages", "row"} (see the module
    docstring of benchmarks/gpu_static.py for their use)."""
    def configs():
        for B, V, dtype, p in static_shapes():
            row = {"kernel": "softmax", "dtype": dtype, "B": B, "V": V, "programs": B * p.parts,
                   "programs_per_row": p.parts, "passes_over_v": 3, "counting": "int64 fixed point"}
            for launch in stats_configs(p, dtype):
                yield config_dict(launch, p, dict(row, mode=f"forward {launch['name']}"))
            yield config_dict({"kernel": _softmax_fwd_kernel, "args": {
                "x_ptr": f"*{dtype}", "stride_x": V, "y_ptr": f"*{dtype}", "stride_y": V,
                **stride_args(p), "t_ptr": "*fp32", "part_max_ptr": "*fp32", "part_arg_ptr": "*i32",
                "part_flag_ptr": "*i32", "part_sum_ptr": "*i64", "sum_ulp": "fp32"},
                "constexprs": {"LOG": False, "PARTS": MAX_PARTS, "BLOCK": p.block}},
                p, dict(row, mode="forward write"))
    return dedupe(configs())


def config_dict(launch: dict, p: Plan, row: dict) -> dict:
    """A static_configs() entry; args in the kernel's parameter order (callers of the
    hook may pass them positionally)."""
    kernel, constexprs = launch["kernel"], launch["constexprs"]
    args = {name: launch["args"][name] for name in kernel.arg_names if name not in constexprs}
    return {"kernel": kernel, "args": args, "constexprs": constexprs, "num_warps": p.num_warps,
            "num_stages": 3, "row": row}
