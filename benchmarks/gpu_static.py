"""Static GPU check: compiles every launch the Triton kernels can choose, for NVIDIA
targets, without a GPU (Triton's own ptxas), and checks what the interpreter cannot see.

    python -m benchmarks.gpu_static --arch 90 --arch 80 [--jobs 2] [--quick]
    make gpu-static

For the recurrent kernels it runs the planner of fastrnn/ops/recurrent/common.py over the
grid below with the target's published limits, compiling candidates exactly as Triton's
JIT specialises them at run time (aligned pointers; integers == 1 as constants and
multiples of 16 with divisibility hints, except the arguments marked do_not_specialize),
and records what the chosen plan needs. Softmax and sampling contribute the configurations
their modules list in `static_configs()`.

Writes benchmarks/results/gpu_static_sm<arch>.json (one object per configuration) and
.md (the same as a Markdown table, also printed). Exits 1 when any configuration has a
fatal hazard:
  compile      - the kernel does not compile for the chosen plan (the launch would raise);
  shared       - shared memory over the target's per-block limit (the launch would fail);
  co-residency - a cooperative (grid-barrier) plan whose programs cannot all be resident;
  pipelining   - a time loop that carries asynchronous copies from one step to the next
                 (a load of data the same launch writes, issued before it is written);
  barrier      - a grid barrier whose release/acquire atomics are missing from the PTX.
Other hazards are recorded, not fatal: spills, replicated warps, few SMs busy.

Registers and local memory come from the cubin (cuobjdump -res-usage, bundled with
Triton); `spill_bytes` is the local memory per thread (stack frame plus local arrays),
which is where spilled registers live. `est_step_us` is a latency model per step (see
step_estimate), to be confirmed or corrected on a GPU.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")   # Triton's default; silences its notice

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from fastrnn.ops.recurrent import backward, common, forward, step_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"
LIMITS = {90: common.SM90, 80: common.SM80}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
CELLS = {"lstm": common.LSTM, "gru": common.GRU, "rnn_tanh": common.RNN_TANH}
BATCHES = (1, 16, 64, 256, 3, 100, 257)
HIDDENS = (128, 256, 512, 768, 1024, 2048, 96, 320, 1000)
QUICK_BATCHES = (1, 16, 64)
QUICK_HIDDENS = (128, 768, 2048, 1000)
FATAL = ("compile", "shared", "co-residency", "pipelining", "barrier")


# ------------------------------------------------------------------ compiling like the JIT


def compile_like_runtime(kernel, args: list, meta: dict, arch: int):
    """Compiles `kernel` for sm_<arch> with the specialisation Triton's JIT would give
    these arguments (MockTensors and ints) and options at run time."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = {k: v for k, v in meta.items() if k != "launch_cooperative_grid"}
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization,
                                                             options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                          options=options.__dict__)


CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def cubin_usage(cubin: bytes) -> dict:
    """REG, STACK, SHARED, LOCAL of the kernel in a cubin, from cuobjdump -res-usage."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(CUOBJDUMP), "-res-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    return {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out)}


@dataclasses.dataclass
class Compiled:
    """What the check keeps of one compiled kernel."""
    regs: int
    spill_bytes: int
    shared_bytes: int
    num_warps: int
    ttgir: str
    ptx: str
    seconds: float

    def resources(self, replicated: bool = False) -> common.Resources:
        return common.Resources(self.regs, self.spill_bytes, self.shared_bytes, self.num_warps,
                                replicated)

    def replicated(self, plan: common.LaunchPlan) -> bool:
        return common.mma_replicated(self.ttgir, plan.block_b, plan.tile_n, plan.split)


class Compiler:
    """Compiles each distinct (kernel, specialisation, options) once per process."""

    def __init__(self, arch: int):
        self.arch = arch
        self.cache = {}

    def __call__(self, kernel, args, meta) -> Compiled:
        key = (kernel.fn.__name__, tuple(_arg_key(a) for a in args), tuple(sorted(meta.items())))
        if key not in self.cache:
            start = time.time()
            c = compile_like_runtime(kernel, args, meta, self.arch)
            usage = cubin_usage(c.asm["cubin"])
            self.cache[key] = Compiled(usage.get("REG", 0), usage.get("STACK", 0) + usage.get("LOCAL", 0),
                                       c.metadata.shared, meta["num_warps"], c.asm["ttgir"],
                                       c.asm["ptx"], time.time() - start)
        return self.cache[key]

    def resources_of(self, kernel, args, plan, meta) -> common.Resources:
        compiled = self(kernel, args, meta)
        return compiled.resources(compiled.replicated(plan))


def _arg_key(arg):
    """Specialisation class of an argument: dtype for tensors, 1 / multiple of 16 / other."""
    if hasattr(arg, "dtype"):
        return str(arg.dtype)
    return 1 if arg == 1 else (16 if arg % 16 == 0 else 0)


# ------------------------------------------------------------------ hazards from the IR


def time_loop(ttgir: str) -> str:
    """The text of the kernel's time loop, its scf.while (both regions), or ''."""
    start = ttgir.find("scf.while")
    if start < 0:
        return ""
    depth, regions = 0, 0
    # The region opens with the first brace ending a line: types in the header may hold
    # braces too (inline layouts such as #ttg.slice<{dim = 1, ...}>).
    for j in range(ttgir.index("{\n", start), len(ttgir)):
        depth += {"{": 1, "}": -1}.get(ttgir[j], 0)
        if depth == 0 and ttgir[j] == "}":
            regions += 1
            if regions == 2 or not ttgir.startswith(" do {", j + 1):
                return ttgir[start:j + 1]
    return ttgir[start:]


CTA_BARRIER = re.compile(r"\b(?:gpu\.barrier|ttg\.barrier)\b")


def pipelining_hazards(ttgir: str) -> list:
    """Asynchronous copies carried across time steps, or steps without a CTA barrier."""
    loop = time_loop(ttgir)
    if not loop:
        return ["pipelining: no scf.while time loop found (the pipeliner may touch a for loop)"]
    header = loop.split("{\n", 1)[0]
    hazards = []
    if "async.token" in header or "memdesc" in header:
        hazards.append("pipelining: the time loop carries async copies / shared buffers to the next step")
    if not CTA_BARRIER.search(loop):
        hazards.append("pipelining: no CTA barrier (bar.sync) between one step's stores and the next loads")
    return hazards


def barrier_hazards(ptx: str, cooperative: bool) -> list:
    """A grid barrier compiles to a release reduction/atomic and acquire loads/atomics."""
    release = re.search(r"\b(?:atom|red)\.[\w.]*\brelease\b", ptx)
    acquire = re.search(r"\b(?:atom|ld)\.[\w.]*\bacquire\b", ptx)
    if cooperative and not (release and acquire):
        return ["barrier: the grid barrier's release/acquire atomics are missing from the PTX"]
    return []


def mma_shape(ttgir: str):
    """(warps per dimension, instruction shape) of the MMA layout."""
    return common.mma_layout(ttgir)


def mma_count(ptx: str) -> int:
    return len(re.findall(r"\b(?:mma\.sync|wgmma\.mma_async)\b", ptx))


# ------------------------------------------------------------------ the model per step


def step_estimate(plan: common.LaunchPlan, cell: int, dtype: str, precision: str, H: int,
                  direction: str) -> dict:
    """Work and L2 traffic per step, and the modelled step time (us) of
    fastrnn/ops/recurrent/step_model.py (the planner's model)."""
    design = step_model.plan_design(plan, step_model.cell_name(cell), direction,
                                    DTYPES[dtype].itemsize, step_model.operand_kind(dtype, precision), H,
                                    exchange_size=backward.exchange_dtype(DTYPES[dtype]).itemsize,
                                    exchange_scaled=backward.exchange_scaled(DTYPES[dtype]))
    streamed = design.weight_bytes if design.weights == step_model.L2 else 0
    return {"macs_per_step_program": design.macs,
            "l2_bytes_per_step": (design.exchange_bytes + streamed) * plan.programs,
            "est_step_us": round(step_model.step_time(design).us, 2)}


# ------------------------------------------------------------------ the recurrent grid


@dataclasses.dataclass(frozen=True)
class Problem:
    cell: str
    direction: str
    dtype: str
    B: int
    H: int
    lengths: bool
    mode: str | None      # None: the planner's choice; "streamed"/"per-step": forced
    precision: str        # "ieee" / "tf32" for fp32 (torch.backends.cudnn.allow_tf32)


def problems(quick: bool) -> list:
    batches, hiddens = (QUICK_BATCHES, QUICK_HIDDENS) if quick else (BATCHES, HIDDENS)
    out = []
    for cell in CELLS:
        for dtype in DTYPES:
            precisions = ("tf32", "ieee") if dtype == "fp32" else ("ieee",)
            for B in batches:
                for H in hiddens:
                    for precision in precisions:
                        for lengths in (False, True):
                            out.append(Problem(cell, "forward", dtype, B, H, lengths, None, precision))
                        out.append(Problem(cell, "backward", dtype, B, H, True, None, precision))
    # The forced modes the tests use, at one size each.
    for cell in ("lstm", "gru"):
        for direction in ("forward", "backward"):
            for mode in ("streamed", "per-step"):
                out.append(Problem(cell, direction, "fp16", 16, 768, True, mode, "ieee"))
    return out


def kernel_of(problem: Problem):
    """(kernel, args for specialisation, meta_of(plan)) of a problem."""
    cell, dtype = CELLS[problem.cell], DTYPES[problem.dtype]
    torch.backends.cudnn.allow_tf32 = problem.precision == "tf32"
    if problem.direction == "forward":
        return (forward.recurrent_forward_kernel, forward.mock_args(dtype, 64, problem.B, problem.H),
                lambda plan: forward.kernel_meta(cell, plan, dtype, True, problem.lengths))
    return (backward._bptt_kernel, backward.mock_args(dtype, 64, problem.B, problem.H),
            lambda plan: backward.kernel_meta(cell, plan, dtype))


def check_problem(problem: Problem, compiler: Compiler, limits: common.DeviceLimits) -> dict:
    kernel, args, meta_of = kernel_of(problem)
    cell = CELLS[problem.cell]
    product = (forward if problem.direction == "forward" else backward).product(cell, DTYPES[problem.dtype])
    row = {"kernel": "recurrent", "cell": problem.cell, "dtype": problem.dtype,
           "direction": problem.direction, "precision": problem.precision,
           "lengths": problem.lengths, "B": problem.B, "H": problem.H,
           "forced_mode": problem.mode is not None}
    try:
        plan = common.plan_for(kernel, args, meta_of, problem.B, problem.H, product, limits,
                               compiler.resources_of, problem.mode)
    except triton.compiler.errors.CompilationError as err:   # the launch would raise
        return dict(row, mode=problem.mode or "none", hazards=[f"compile: {str(err)[-300:]}"])
    except RuntimeError as err:   # no candidate fits: the call would fail on this GPU
        return dict(row, mode=problem.mode or "none", hazards=[f"shared: {err}"])
    meta = meta_of(plan)
    c = compiler(kernel, args, meta)
    per_sm = common.programs_per_sm(c.resources(), limits)
    hazards = [f"{kind}: {text}" for kind, text in _plan_hazards(plan, c, per_sm, limits)]
    hazards += pipelining_hazards(c.ttgir) + barrier_hazards(c.ptx, plan.cooperative)
    replicated = c.replicated(plan)
    if replicated:
        hazards.append(f"replicated-warps: {mma_shape(c.ttgir)} (warps, instruction shape) on a "
                       f"{plan.block_b}x{plan.tile_n} tile")
    sms = min(plan.programs, limits.sms)
    busiest, even = sm_balance(plan, problem.H, limits)
    if problem.H >= 768 and problem.B <= 64 and plan.persistent and busiest > 2 * even:
        hazards.append(f"sms: {sms} of {limits.sms} SMs busy; the busiest computes {busiest} units per "
                       f"step where an even split gives {even:.1f}")
    per_warp = mma_count(c.ptx)
    if not plan.resident:   # the K-chunk loop body runs H / BLOCK_K times per step
        per_warp *= triton.cdiv(problem.H * (common.GATES[cell] if problem.direction == "backward" else 1),
                                plan.block_k * (common.GATES[cell] if problem.direction == "backward" else 1))
    row.update(mode=plan.mode, block_b=plan.block_b, block_h=plan.block_h, block_k=plan.block_k,
               tile_n=plan.tile_n, split_k=plan.split, num_warps=plan.num_warps, num_stages=meta["num_stages"], programs=plan.programs,
               sms_used=sms, regs=c.regs, spill_bytes=c.spill_bytes, shared_bytes=c.shared_bytes,
               programs_per_sm=per_sm, co_resident=plan.programs <= per_sm * limits.sms,
               mma_per_step_warp=per_warp, mma_per_step_program=per_warp * plan.num_warps,
               replicated_warps=replicated, compile_s=round(c.seconds, 1), plan_reason=plan.reason,
               **step_estimate(plan, cell, problem.dtype, problem.precision, problem.H, problem.direction),
               hazards=hazards)
    return row


def sm_balance(plan: common.LaunchPlan, H: int, limits: common.DeviceLimits):
    """(hidden units x batch blocks the busiest SM computes per step, the even share of
    all SMs): the step waits for the busiest SM, and two programs on one SM count double.
    Power-of-two unit blocks rarely split H evenly, so the check allows twice the share
    (on 108 SMs, 64 programs of 16 units at H = 1024 are as fast as 128 of 8 would be)."""
    busiest = -(-plan.programs // limits.sms) * plan.block_h
    return busiest, plan.programs_b * H / limits.sms


def _plan_hazards(plan, c: Compiled, per_sm: int, limits):
    if c.shared_bytes > limits.shared_per_block:
        yield "shared", f"{c.shared_bytes} B > {limits.shared_per_block} B per block"
    if plan.cooperative and plan.programs > per_sm * limits.sms:
        yield "co-residency", f"{plan.programs} programs, {per_sm} per SM x {limits.sms} SMs"
    if c.spill_bytes:
        yield "spills", f"{c.spill_bytes} B local memory per thread"


# ------------------------------------------------------------------ softmax and sampling


def row_kernel_rows(compiler: Compiler, limits) -> list:
    """The configurations the softmax and sampling modules list (static_configs())."""
    from fastrnn.ops.sampling import triton as sampling_triton
    from fastrnn.ops.softmax import triton as softmax_triton
    rows = []
    for module in (softmax_triton, sampling_triton):
        for config in getattr(module, "static_configs", lambda: [])():
            meta = dict(config["constexprs"], num_warps=config["num_warps"],
                        num_stages=config.get("num_stages", 3))
            args = [_mock(v) for v in config["args"].values()]
            c = compiler(config["kernel"], args, meta)
            per_sm = common.programs_per_sm(c.resources(), limits)
            hazards = [f"shared: {c.shared_bytes} B > {limits.shared_per_block} B"] \
                if c.shared_bytes > limits.shared_per_block else []
            if c.spill_bytes:
                hazards.append(f"spills: {c.spill_bytes} B local memory per thread")
            rows.append(dict(config["row"], num_warps=config["num_warps"], num_stages=meta["num_stages"],
                             regs=c.regs, spill_bytes=c.spill_bytes, shared_bytes=c.shared_bytes,
                             programs_per_sm=per_sm,
                             fp64_instructions=len(re.findall(r"\.f64\b", c.ptx)),
                             compile_s=round(c.seconds, 1), hazards=hazards))
    return rows


def _mock(value):
    """A static_configs() argument: '*fp32'-style pointer types become MockTensors."""
    from triton.runtime.jit import MockTensor
    if isinstance(value, str) and value.startswith("*"):
        names = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32,
                 "fp64": torch.float64, "i8": torch.int8, "i32": torch.int32, "i64": torch.int64,
                 "u8": torch.uint8, "i1": torch.bool}
        return MockTensor(names[value[1:]])
    if value == "fp32":
        return 1.5   # a float argument (never specialised)
    return value


# ------------------------------------------------------------------ driver


def _worker(arch: int, chunk: list) -> list:
    compiler = Compiler(arch)
    rows = []
    for i, p in enumerate(chunk):
        rows.append(check_problem(p, compiler, LIMITS[arch]))
        if i % 25 == 24:
            print(f"sm_{arch} worker {os.getpid()}: {i + 1}/{len(chunk)} configurations, "
                  f"{len(compiler.cache)} compiled", file=sys.stderr, flush=True)
    return rows


def _row_kernels_worker(arch: int) -> list:
    return row_kernel_rows(Compiler(arch), LIMITS[arch])


def run(arch: int, jobs: int, quick: bool) -> list:
    """Every configuration for one target, `jobs` processes; problems that tend to share
    compiled configurations (same cell, direction, dtype) stay in one process."""
    groups = {}
    for p in problems(quick):
        groups.setdefault((p.cell, p.direction, p.dtype, p.precision), []).append(p)
    chunks = [[] for _ in range(jobs)]
    for i, group in enumerate(sorted(groups.values(), key=len, reverse=True)):
        min(chunks, key=len).extend(group)
    with concurrent.futures.ProcessPoolExecutor(jobs) as pool:
        futures = [pool.submit(_worker, arch, chunk) for chunk in chunks if chunk]
        futures.append(pool.submit(_row_kernels_worker, arch))
        rows = [row for f in futures for row in f.result()]
    return rows


COLUMNS = ("kernel", "cell", "dtype", "direction", "precision", "mode", "B", "H", "V", "block_b",
           "block_h", "block_k", "tile_n", "split_k", "num_warps", "programs", "sms_used", "programs_per_row", "passes_over_v",
           "regs", "spill_bytes", "shared_bytes", "programs_per_sm", "mma_per_step_warp",
           "replicated_warps", "l2_bytes_per_step", "est_step_us", "hazards")


def markdown(rows: list, arch: int, seconds: float) -> str:
    fatal = sum(1 for r in rows if any(h.split(":")[0] in FATAL for h in r["hazards"]))
    lines = [f"# Static GPU check, sm_{arch}", "",
             f"{len(rows)} configurations, {fatal} with a fatal hazard; Triton {triton.__version__}, "
             f"{seconds:.0f} s. Generated by `python -m benchmarks.gpu_static` (see its docstring); "
             "est_step_us is a model, not a measurement.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = []
        for col in COLUMNS:
            v = r.get(col, "")
            cells.append("; ".join(v) if isinstance(v, list) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, action="append", choices=sorted(LIMITS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smaller grid (development)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        sys.exit("gpu_static: unset TRITON_INTERPRET (the interpreter replaces the kernels it compiles)")
    failed = False
    for arch in args.arch or [90, 80]:
        start = time.time()
        rows = run(arch, args.jobs, args.quick)
        seconds = time.time() - start
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"gpu_static_sm{arch}.json").write_text(json.dumps(rows, indent=1) + "\n")
        table = markdown(rows, arch, seconds)
        (args.out / f"gpu_static_sm{arch}.md").write_text(table)
        print(table)
        bad = [r for r in rows if any(h.split(":")[0] in FATAL for h in r["hazards"])]
        for r in bad:
            print(f"FATAL sm_{arch}: {r}", file=sys.stderr)
        failed |= bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
