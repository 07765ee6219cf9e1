"""Static GPU check: compiles every launch the Triton kernels can choose, for NVIDIA
targets, without a GPU (Triton's own ptxas), and checks what the interpreter cannot see.

    python -m benchmarks.gpu_static --ci [--arch 90 --arch 80] [--jobs 2]   # make gpu-static (CI)
    python -m benchmarks.gpu_static [--arch 90 --arch 80] [--jobs 2]        # make gpu-static-full

For the recurrent kernels it runs the planner of fastrnn/ops/recurrent/common.py over the
grid below with the target's published limits, compiling candidates exactly as Triton's
JIT specialises them at run time (aligned pointers; integers == 1 as constants and
multiples of 16 with divisibility hints, except the arguments marked do_not_specialize),
and records what the chosen plan needs. Softmax and sampling contribute the configurations
their modules list in `static_configs()`.

The full grid (about 2,300 configurations per target, 40 min on 2 cores with a cold
Triton cache) writes the committed tables, benchmarks/results/gpu_static_sm<arch>.json
(arch, Triton version, `sources_sha256` of the SOURCES that determine the tables, seconds,
one row per configuration) and .md (the rows as Markdown). `--ci` compiles the headline
grid and a fixed sample of the rest (see in_ci_sample) into build/gpu-static, and fails
when the committed tables were made from other sources (then run the full grid and commit
it) or when a recompiled row differs from its committed row (compile times aside). Both
print a short summary and exit 1 when any configuration has a fatal hazard:
  compile      - the kernel does not compile for the chosen plan (the launch would raise);
  shared       - shared memory over the target's per-block limit (the launch would fail);
  co-residency - a cooperative (grid-barrier) plan whose programs cannot all be resident;
  pipelining   - a time loop that carries asynchronous copies from one step to the next
                 (a load of data the same launch writes, issued before it is written);
  cache        - a load of data other programs write in the same launch (h_t, gate
                 gradients, the barrier counter) that may read stale data: .nc, constant
                 or texture path, or an L1 line not invalidated after the acquire (see
                 "memory ordering in the PTX");
  barrier      - a grid barrier out of order in the PTX: no CTA barrier before the release
                 add, no poll loop of acquire loads, or a path from the release to an
                 exchange load without an acquire and a CTA barrier.
Other hazards are recorded, not fatal: spills, replicated warps, few SMs busy.

Registers and local memory come from the cubin (cuobjdump -res-usage, bundled with
Triton); `spill_bytes` is the local memory per thread (stack frame plus local arrays),
which is where spilled registers live. `est_step_us` is a latency model per step (see
step_estimate), to be confirmed or corrected on a GPU.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import hashlib
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
BATCHES = (1, 8, 16, 64, 256, 3, 100, 257)
HIDDENS = (128, 256, 512, 768, 1024, 2048, 96, 320, 1000)
QUICK_BATCHES = (1, 16, 64)
QUICK_HIDDENS = (128, 768, 2048, 1000)
FATAL = ("compile", "shared", "co-residency", "pipelining", "cache", "barrier")


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


def sass_of(cubin: bytes) -> str:
    """The cubin's SASS, from cuobjdump -sass."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(CUOBJDUMP), "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout


@dataclasses.dataclass
class Compiled:
    """What the check keeps of one compiled kernel."""
    regs: int
    spill_bytes: int
    shared_bytes: int
    num_warps: int
    ttgir: str
    ptx: str
    cubin: bytes
    seconds: float
    ordering: dict = dataclasses.field(default_factory=dict)

    def ordering_hazards(self, cooperative: bool) -> list:
        """The cache and barrier rules on this kernel's PTX (and SASS where the cache rule
        needs it), once per compile."""
        if cooperative not in self.ordering:
            ptx = Ptx(self.ptx)
            self.ordering[cooperative] = (cache_hazards(ptx, cooperative, lambda: sass_of(self.cubin))
                                          + barrier_hazards(ptx, cooperative))
        return self.ordering[cooperative]

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
                                       c.asm["ptx"], c.asm["cubin"], time.time() - start)
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


# ------------------------------------------------------------------ memory ordering in the PTX
#
# The programs of a persistent launch exchange data through global memory within the
# launch: h_t (forward), the gate gradients (BPTT) and the barrier counter. The rules below
# read the PTX of the whole kernel (one .entry, as Triton emits it) as a control-flow graph
# of basic blocks, with the pointer parameter(s) each register's value derives from.
#
# Exchange load: a global load inside a loop of the kernel (the time loop, an outermost
# loop, nested loops included) whose address derives from a pointer parameter that the same
# loop also writes (st, red, atom). Loads before or after the loop (h0, the final states)
# and loads of buffers the loop never writes (weights, x projections) are not exchange
# loads. The rule reads no source names or modifiers to find them, so a load that lost its
# `.cg` is still found.
#
# Cache rule ("cache", fatal): an exchange load never takes the non-coherent path
# (`.nc`, `ldu`, constant or texture/surface memory: data assumed read-only for the whole
# kernel), and never reads a line an SM's L1 may hold from before the acquire. It either
# bypasses L1 (`ld` with `.cg` / `.cv`, a strong load: `.relaxed` / `.acquire` at `.gpu` /
# `.sys` scope or `.volatile`; `cp.async.cg`; bulk (TMA) copies), or, in a grid-barrier
# plan, L1 is invalidated after the acquire: the barrier rule below orders the load after
# an acquire and a CTA barrier, and the SASS shows the invalidation (ptxas compiles each
# acquire load to LDG.E.STRONG.GPU followed by CCTL.IVALL). The kernels ask for `.cg`;
# Triton still emits `cp.async.ca` where it cannot prove 16-byte alignment (4-byte copies
# of the gate gradients at H = 1000), which this second branch accepts. Without a grid
# barrier the data comes from threads of the same program (whose L1 it is, ordered by the
# CTA barrier) or from earlier launches, and weak loads are coherent.
#
# Barrier rule ("barrier", fatal, cooperative plans): a release add to the counter (red /
# atom `.release` or `.acq_rel`, or relaxed after `fence.acq_rel` / `fence.sc`) exists, and
# every path to it passes a CTA barrier (bar.sync) after the program's last global write,
# so every thread's stores are published; acquire reads of the counter sit in a poll loop
# (a loop without the release); and on every path from the release to an exchange load
# there is an acquire of the counter and then a CTA barrier (the one thread that polled
# passes the order on to the others).

PTX_DIRECTIVE = re.compile(r"^\s*(?:\.|\{|\}|$)")
PTX_LABEL = re.compile(r"^\s*([$\w]+):")
PTX_STATEMENT = re.compile(r"(@!?%\w+\s+)?([A-Za-z][\w.:]*)\s*(.*)", re.S)
PTX_REGISTER = re.compile(r"%[A-Za-z_]\w*")
PTX_BRACKETS = re.compile(r"\[([^\]]*)\]")
NO_REGISTER_DEST = {"st", "red", "cp", "bar", "barrier", "bra", "ret", "exit", "trap", "fence",
                    "membar", "prefetch", "prefetchu", "stmatrix", "call"}
CTA_BARRIERS = ("bar.sync", "bar.red", "barrier.sync", "barrier.red", "barrier.cta.sync",
                "barrier.cta.red")
GPU_FENCES = ("fence.acq_rel.gpu", "fence.sc.gpu", "fence.acq_rel.sys", "fence.sc.sys",
              "membar.gl", "membar.sys")


@dataclasses.dataclass
class PtxOp:
    """One PTX instruction: its opcode with modifiers ('ld.global.cg.v4.b32'), the
    registers it writes and reads, the registers of its global address, branch targets."""
    line: int
    op: str
    guarded: bool
    writes: tuple
    reads: tuple
    address: tuple
    targets: tuple
    text: str

    @property
    def mods(self) -> set:
        return {m.split("::")[0] for m in self.op.split(".")}

    def state_spaces(self) -> list:
        return [m.split("::")[0] for m in self.op.split(".")
                if m.split("::")[0] in ("global", "shared", "local", "param", "const")]

    def is_cta_barrier(self) -> bool:
        return self.op.startswith(CTA_BARRIERS)

    def is_global_load(self) -> bool:
        base = self.op.split(".")[0]
        if base == "cp":   # cp.async[.bulk] ... .shared.global [dst], [src]: a load if src is global
            return self.state_spaces()[1:2] == ["global"]
        if base in ("tex", "tld4", "suld"):
            return True
        spaces = self.state_spaces()
        return base in ("ld", "ldu") and bool(self.address) and spaces[:1] in ([], ["global"], ["const"])

    def is_global_write(self) -> bool:
        base = self.op.split(".")[0]
        if base == "cp":   # cp[.reduce].async.bulk.global.shared [dst], [src]
            return self.state_spaces()[:1] == ["global"]
        return base in ("st", "red", "atom") and self.state_spaces()[:1] in ([], ["global"])

    def strong_gpu(self) -> bool:
        mods = self.mods
        return bool(mods & {"relaxed", "acquire", "release", "acq_rel"}) and "cta" not in mods \
            or "volatile" in mods


@dataclasses.dataclass
class PtxBlock:
    label: str
    ops: list
    succ: set = dataclasses.field(default_factory=set)
    pred: set = dataclasses.field(default_factory=set)


class Ptx:
    """The kernel of a PTX module as basic blocks, with, for each register, the pointer
    parameters its value derives from (through arithmetic, not through memory) and the
    loop forest of its control-flow graph."""

    def __init__(self, ptx: str):
        entry = ptx.find(".entry")
        head_end = ptx.find("\n{", entry)
        body_end = ptx.find("\n}", head_end)
        if entry < 0 or head_end < 0 or body_end < 0:
            raise ValueError("no .entry function body in the PTX")
        header = ptx[entry:head_end]
        self.pointers = set(re.findall(r"\.param\s+\.[ub]64\b[^,\n)]*?\s(\w+)\s*[,)\n]", header + "\n"))
        first_line = ptx.count("\n", 0, head_end) + 2
        statements = []   # (line, label or None, statement text)
        for n, text in enumerate(ptx[head_end + 2:body_end].split("\n"), first_line):
            text = text.split("//")[0]
            label = PTX_LABEL.match(text)
            if label:
                statements.append((n, label.group(1), ""))
                text = text[label.end():]
            if PTX_DIRECTIVE.match(text):
                continue
            statements += [(n, None, s.strip()) for s in text.split(";") if s.strip()]
        ops = [(n, label, _parse_ptx_op(n, s) if s else None) for n, label, s in statements]
        targets = {t for _, _, op in ops if op for t in op.targets}
        self.blocks = [PtxBlock("entry", [])]
        for _, label, op in ops:
            if label is not None:
                if label in targets:
                    self.blocks.append(PtxBlock(label, []))
                continue
            self.blocks[-1].ops.append(op)
            if op.op.split(".")[0] in ("bra", "ret", "exit", "trap"):
                self.blocks.append(PtxBlock(f"after line {op.line}", []))
        index = {b.label: i for i, b in enumerate(self.blocks)}
        for i, block in enumerate(self.blocks):
            last = block.ops[-1] if block.ops else None
            block.succ = {index[t] for t in (last.targets if last else ())}
            ends = last is not None and not last.guarded and last.op.split(".")[0] in ("bra", "ret", "exit", "trap")
            if not ends and i + 1 < len(self.blocks):
                block.succ.add(i + 1)
        # Blocks after an unconditional branch that no branch targets are unreachable:
        # dropped, so that they count as no block's predecessor.
        reachable, work = {0}, [0]
        while work:
            for j in self.blocks[work.pop()].succ - reachable:
                reachable.add(j)
                work.append(j)
        for i, block in enumerate(self.blocks):
            if i not in reachable:
                block.ops, block.succ = [], set()
        for i, block in enumerate(self.blocks):
            for j in block.succ:
                self.blocks[j].pred.add(i)
        self.taint = self._taint()
        self.loops = _loop_forest(reachable, {i: b.succ for i, b in enumerate(self.blocks)})

    def _taint(self) -> dict:
        taint = {}
        changed = True
        while changed:
            changed = False
            for block in self.blocks:
                for op in block.ops:
                    if op.op.startswith("ld.param"):
                        names = {p for p in re.findall(r"\[\s*(\w+)", op.text) if p in self.pointers}
                        new = frozenset(names)
                    elif op.op.split(".")[0] in ("ld", "ldu", "atom", "ldmatrix", "tex", "tld4", "suld"):
                        continue   # a value loaded from memory is data, not an address
                    else:
                        new = frozenset().union(*(taint.get(r, frozenset()) for r in op.reads))
                    for w in op.writes:
                        if not new <= taint.get(w, frozenset()):
                            taint[w] = taint.get(w, frozenset()) | new
                            changed = True
        return taint

    def buffers(self, op: PtxOp) -> frozenset:
        """The pointer parameters the op's global address derives from."""
        return frozenset().union(*(self.taint.get(r, frozenset()) for r in op.address))

    def ops_in(self, blocks) -> list:
        return [op for b in sorted(blocks) for op in self.blocks[b].ops]

    def innermost_loop(self, block: int):
        loops, found = self.loops, None
        while True:
            inner = [loop for loop in loops if block in loop.blocks]
            if not inner:
                return found
            found = inner[0]
            loops = found.children

    def exchange_loads(self) -> list:
        """Global loads in a loop of buffers the same loop writes (outermost loops)."""
        loads = []
        for loop in self.loops:
            ops = self.ops_in(loop.blocks)
            written = frozenset().union(*(self.buffers(op) for op in ops if op.is_global_write()))
            loads += [op for op in ops if op.is_global_load() and self.buffers(op) & written]
        return loads

    def locate(self, target: PtxOp):
        for b, block in enumerate(self.blocks):
            for i, op in enumerate(block.ops):
                if op is target:
                    return b, i
        raise KeyError(target)

    def fenced(self, op: PtxOp, before: bool) -> bool:
        """Whether the op's neighbour in its block (before or after) is a GPU-scope fence."""
        b, i = self.locate(op)
        ops = self.blocks[b].ops
        j = i - 1 if before else i + 1
        return 0 <= j < len(ops) and ops[j].op.startswith(GPU_FENCES)


@dataclasses.dataclass
class Loop:
    blocks: frozenset
    children: list


def _loop_forest(nodes: set, succ: dict) -> list:
    """Loops of the graph restricted to `nodes`: its cyclic strongly connected components,
    each with the loops inside it (the component without the edges into its headers)."""
    loops = []
    for scc in _sccs(nodes, succ):
        if len(scc) == 1 and next(iter(scc)) not in succ[next(iter(scc))]:
            continue
        headers = {n for n in scc if any(n in succ[m] for m in set(succ) - scc)} or {min(scc)}
        inner = {n: {m for m in succ[n] if m in scc and m not in headers} for n in scc}
        loops.append(Loop(frozenset(scc), _loop_forest(scc, inner)))
    return loops


def _sccs(nodes: set, succ: dict) -> list:
    """Tarjan's strongly connected components, iteratively."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(m for m in succ[root] if m in nodes)))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(m for m in succ[child] if m in nodes))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                scc = set()
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    scc.add(m)
                    if m == node:
                        break
                out.append(scc)
    return out


def _split_operands(text: str) -> list:
    out, depth, current = [], 0, ""
    for ch in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            out.append(current.strip())
            current = ""
        else:
            current += ch
    return out + [current.strip()] if current.strip() else out


def _parse_ptx_op(line: int, statement: str) -> PtxOp:
    guard, op, rest = PTX_STATEMENT.match(statement).groups()
    operands = _split_operands(rest)
    base = op.split(".")[0]
    has_dest = base not in NO_REGISTER_DEST and operands
    writes = tuple(PTX_REGISTER.findall(operands[0])) if has_dest else ()
    reads = tuple(r for o in operands[1 if has_dest else 0:] for r in PTX_REGISTER.findall(o))
    if guard:
        reads += tuple(PTX_REGISTER.findall(guard))
    brackets = PTX_BRACKETS.findall(rest)
    if base == "cp" and brackets:
        spaces = [m.split("::")[0] for m in op.split(".") if m.split("::")[0] in ("global", "shared")]
        brackets = [brackets[spaces.index("global")]] if "global" in spaces and len(brackets) > spaces.index("global") else []
    address = tuple(PTX_REGISTER.findall(brackets[0])) if brackets else ()
    targets = tuple(operands) if base == "bra" else ()
    return PtxOp(line, op, bool(guard), writes, reads, address, targets, statement)


NON_COHERENT = "the non-coherent path (.nc / ldu / constant / texture: read-only for the whole kernel)"


def cache_kind(op: PtxOp) -> str:
    """'non-coherent', 'l2' (L1 bypassed: .cg / .cv / strong at gpu scope / bulk copies)
    or 'l1' (a weak load that may allocate in and hit L1: plain ld, .ca, cp.async.ca)."""
    base, mods = op.op.split(".")[0], op.mods
    if "nc" in mods or base in ("ldu", "tex", "tld4", "suld") or "const" in op.state_spaces():
        return "non-coherent"
    if base == "cp":
        return "l2" if "bulk" in mods or "cg" in mods else "l1"
    if mods & {"cg", "cv", "volatile"} or (mods & {"relaxed", "acquire"} and mods & {"gpu", "sys"}):
        return "l2"
    return "l1"


def l1_invalidated_after_acquires(p: Ptx, sass: str) -> bool:
    """Whether the SASS invalidates L1 (CCTL.IVALL) after each acquire: at least one
    invalidation per acquire load / atomic of the PTX, and at least one."""
    acquires = sum(1 for op in p.ops_in(range(len(p.blocks))) if op.op.split(".")[0] in ("ld", "atom")
                   and op.mods & {"acquire", "acq_rel"} and "cta" not in op.mods)
    return 0 < acquires <= len(re.findall(r"\bCCTL\.IVALL\b", sass))


def cache_hazards(ptx, cooperative: bool = True, sass=None) -> list:
    """Exchange loads that may read stale data (see the rules above); also a hazard when
    the kernel's PTX (text or Ptx) has no exchange load at all (the recurrent kernels always
    have one: the rule would be blind), fatal for cooperative plans. `sass`: the kernel's SASS, or a function giving it
    (called only when a weak exchange load needs its evidence)."""
    p = ptx if isinstance(ptx, Ptx) else Ptx(ptx)
    loads = p.exchange_loads()
    if not loads:
        # Fatal where programs exchange data inside the launch (a grid barrier). Without one
        # (per-step launches, one program along H) other programs' data arrives across a
        # launch boundary and a program's own through its CTA barrier: the rule could not
        # look, which is recorded, not fatal.
        kind = "cache" if cooperative else "cache-unchecked"
        return [f"{kind}: no exchange load found in the PTX (a time loop loading a buffer it writes)"]
    found = {}
    for op in loads:
        kind = cache_kind(op)
        if kind == "non-coherent":
            found.setdefault((op.op, NON_COHERENT), []).append(op.line)
        elif kind == "l1" and cooperative:
            text = sass() if callable(sass) else sass
            if text is None or not l1_invalidated_after_acquires(p, text):
                why = ("a weak load that may hit L1 (neither .cg nor strong at gpu scope), and the "
                       "SASS shows no L1 invalidation (CCTL.IVALL) after each acquire")
                found.setdefault((op.op, why), []).append(op.line)
    return [f"cache: {op} at PTX line {lines[0]} ({len(lines)} such): {why}"
            for (op, why), lines in found.items()]


def barrier_hazards(ptx, cooperative: bool) -> list:
    """The grid barrier's order in the PTX (text or Ptx; see the rules above); [] for plans
    without one."""
    if not cooperative:
        return []
    p = ptx if isinstance(ptx, Ptx) else Ptx(ptx)
    ops = p.ops_in(range(len(p.blocks)))
    releases = [op for op in ops if op.is_global_write() and op.op.split(".")[0] in ("red", "atom")
                and "cta" not in op.mods
                and (op.mods & {"release", "acq_rel"} or p.fenced(op, before=True))]
    if not releases:
        return ["barrier: no release add (red/atom .release at gpu scope) publishes the programs' stores"]
    counters = frozenset().union(*(p.buffers(op) for op in releases))
    acquires = [op for op in ops if op.op.split(".")[0] in ("ld", "atom") and p.buffers(op) & counters
                and "cta" not in op.mods
                and (op.mods & {"acquire", "acq_rel"} or (op.strong_gpu() and p.fenced(op, before=False)))]
    hazards = []
    for release in releases:
        if not _cta_barrier_before(p, release):
            hazards.append(f"barrier: the release add at PTX line {release.line} can be reached after "
                           "a global store without a CTA barrier between")
    release_blocks = {p.locate(op)[0] for op in releases}
    polls = [op for op in acquires if (loop := p.innermost_loop(p.locate(op)[0])) is not None
             and not loop.blocks & release_blocks]
    if not polls:
        hazards.append("barrier: no poll loop of acquire loads of the barrier counter")
    exchange = {id(op) for op in p.exchange_loads()} - {id(op) for op in acquires}
    for release in releases:
        line = _unordered_exchange_load(p, release, {id(op) for op in acquires}, exchange)
        if line is not None:
            hazards.append(f"barrier: the exchange load at PTX line {line} can follow the release at "
                           f"line {release.line} without an acquire of the counter and a CTA barrier between")
    return hazards


def _cta_barrier_before(p: Ptx, release: PtxOp) -> bool:
    """Every path into `release` passes a CTA barrier after its last global write."""
    b, i = p.locate(release)
    work, seen = [(b, i)], set()
    while work:
        b, i = work.pop()
        for op in reversed(p.blocks[b].ops[:i]):
            if op.is_cta_barrier():
                break
            if op.is_global_write():
                return False
        else:
            if not p.blocks[b].pred:
                return False   # the kernel's entry, no barrier on the way
            for pred in p.blocks[b].pred:
                if pred not in seen:
                    seen.add(pred)
                    work.append((pred, len(p.blocks[pred].ops)))
    return True


def _unordered_exchange_load(p: Ptx, release: PtxOp, acquires: set, exchange: set):
    """The PTX line of an exchange load that a path from `release` reaches before an
    acquire of the counter followed by a CTA barrier, or None."""
    b, i = p.locate(release)
    work, seen = [(b, i + 1, 0)], set()
    while work:
        b, i, state = work.pop()   # state 0: after the release, 1: acquired, 2: and a CTA barrier
        for op in p.blocks[b].ops[i:]:
            if id(op) in acquires:
                state = max(state, 1)
            elif id(op) in exchange and state < 2:
                return op.line
            elif op.is_cta_barrier() and state == 1:
                state = 2
        if state == 2:
            continue
        for succ in p.blocks[b].succ:
            if (succ, state) not in seen:
                seen.add((succ, state))
                work.append((succ, 0, state))
    return None


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
        return (forward.recurrent_forward_kernel, forward.mock_args(dtype, 64, problem.B, problem.H, problem.lengths),
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
    except RuntimeError as err:
        if "no launch plan" in str(err):   # no candidate fits: the call would fail on this GPU
            return dict(row, mode=problem.mode or "none", hazards=[f"shared: {err}"])
        # The compiler itself failed (Triton 3.6's "PassManager::run failed"): so would the call.
        return dict(row, mode=problem.mode or "none", hazards=[f"compile: {str(err)[-300:]}"])
    meta = meta_of(plan)
    c = compiler(kernel, args, meta)
    per_sm = common.programs_per_sm(c.resources(), limits)
    hazards = [f"{kind}: {text}" for kind, text in _plan_hazards(plan, c, per_sm, limits)]
    hazards += pipelining_hazards(c.ttgir) + c.ordering_hazards(plan.cooperative)
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
               tile_n=plan.tile_n, split_k=plan.split, k_chunks=plan.k_chunks, num_warps=plan.num_warps, num_stages=meta["num_stages"], programs=plan.programs,
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


# ------------------------------------------------------------------ what CI compiles

# CI compiles the headline grid: the benchmark's headline size (B = 16, H = 768) and the
# larger hidden sizes at that batch, and B = 64, H = 1024 (a plan the grid tests run),
# every cell, direction, dtype, precision and lengths variant, plus the forced modes; and one in SAMPLE_EVERY of the other problems, picked
# by a hash of the problem itself (adding problems to the grid never changes which of the
# old ones CI samples). Kernels differ mostly by H (B shares them), so this is about a
# quarter of the full grid's distinct kernels (the committed sm_90 table: 177 of 711).
HEADLINE_BATCHES = (16,)
HEADLINE_HIDDENS = (768, 1024, 2048)
HEADLINE_EXTRA = ((64, 1024),)
SAMPLE_EVERY = 16

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / "build" / "gpu-static"
# What determines the tables, besides the Triton version: kernels, planner, launch
# configurations and this check. A change to any of them makes the committed tables stale.
SOURCES = ("fastrnn/ops/recurrent/*.py", "fastrnn/ops/softmax/triton.py",
           "fastrnn/ops/sampling/triton.py", "benchmarks/gpu_static.py")
TIMING_FIELDS = ("compile_s",)


def in_ci_sample(p: Problem) -> bool:
    if p.mode is not None or (p.B in HEADLINE_BATCHES and p.H in HEADLINE_HIDDENS) \
            or (p.B, p.H) in HEADLINE_EXTRA:
        return True
    digest = hashlib.sha256(repr(dataclasses.astuple(p)).encode()).digest()
    return int.from_bytes(digest[:8], "big") % SAMPLE_EVERY == 0


def sources_hash(root: Path = ROOT) -> str:
    """sha256 of the Triton version and of each SOURCES file (its path and bytes)."""
    h = hashlib.sha256(f"triton {triton.__version__}\n".encode())
    for path in sorted({p for pattern in SOURCES for p in root.glob(pattern)}):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def row_key(row: dict) -> tuple:
    """What identifies a configuration: the problem, not what the planner chose for it
    (a recurrent row's mode is the planner's choice unless it was forced)."""
    key = tuple(row.get(k) for k in ("kernel", "cell", "dtype", "direction", "precision", "lengths",
                                     "B", "H", "V", "forced_mode"))
    return key + (row.get("mode"),) if row["kernel"] != "recurrent" or row.get("forced_mode") else key


def compare_rows(rows: list, committed: list) -> list:
    """Differences of `rows` from the committed rows of the same configurations, timing
    fields aside; committed rows of configurations not in `rows` are not compared."""
    by_key = {row_key(r): r for r in committed}
    out = []
    for row in rows:
        old = by_key.get(row_key(row))
        if old is None:
            out.append(f"{_describe(row)}: not in the committed table")
            continue
        fields = sorted((set(row) | set(old)) - set(TIMING_FIELDS))
        changed = [f"{f} {old.get(f)!r} -> {row.get(f)!r}" for f in fields if old.get(f) != row.get(f)]
        if changed:
            out.append(f"{_describe(row)}: " + "; ".join(changed))
    return out


def _describe(row: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in zip(("kernel", "cell", "dtype", "direction", "precision",
                                                 "lengths", "B", "H", "V", "forced_mode", "mode"),
                                                row_key(row)) if v is not None)


def verify(table: dict, results: Path):
    """(whether the committed table of the same target was made from these sources,
    summary lines, whether any recompiled row differs from its committed row)."""
    committed = read_table(results / f"gpu_static_sm{table['arch']}.json")
    digest = table["sources_sha256"]
    if committed is None or committed["sources_sha256"] != digest:
        old = (committed or {}).get("sources_sha256") or "none"
        return False, [f"  sources sha256 {digest[:16]}, the committed table's {old[:16]}"], False
    differences = compare_rows(table["rows"], committed["rows"])
    lines = [f"  sources sha256 {digest[:16]} as committed; {len(table['rows']) - len(differences)} of "
             f"{len(table['rows'])} rows equal the committed rows (timings aside)"]
    return True, lines + [f"  DIFFERS {d}"[:400] for d in differences[:20]], bool(differences)


def fatal_hazards(row: dict) -> list:
    return [h for h in row["hazards"] if h.split(":")[0] in FATAL]


# ------------------------------------------------------------------ driver


def _worker(arch: int, chunk: list) -> list:
    compiler = Compiler(arch)
    rows, start = [], time.time()
    for i, p in enumerate(chunk):
        rows.append(check_problem(p, compiler, LIMITS[arch]))
        if i % 100 == 99 or i + 1 == len(chunk):
            print(f"sm_{arch} worker {os.getpid()}: {i + 1}/{len(chunk)} configurations, "
                  f"{len(compiler.cache)} kernels compiled, {time.time() - start:.0f} s",
                  file=sys.stderr, flush=True)
    return rows


def _row_kernels_worker(arch: int) -> list:
    return row_kernel_rows(Compiler(arch), LIMITS[arch])


def run(arch: int, jobs: int, selection: list) -> list:
    """The recurrent problems of `selection` and every softmax / sampling configuration
    for one target, in `jobs` processes; problems that tend to share compiled
    configurations (same cell, direction, dtype) stay in one process."""
    groups = {}
    for p in selection:
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
           "block_h", "block_k", "tile_n", "split_k", "k_chunks", "num_warps", "programs", "sms_used", "programs_per_row", "passes_over_v",
           "regs", "spill_bytes", "shared_bytes", "programs_per_sm", "mma_per_step_warp",
           "replicated_warps", "l2_bytes_per_step", "est_step_us", "hazards")


def markdown(table: dict) -> str:
    rows = table["rows"]
    fatal = sum(1 for r in rows if fatal_hazards(r))
    lines = [f"# Static GPU check, sm_{table['arch']}", "",
             f"{len(rows)} configurations, {fatal} with a fatal hazard; Triton {table['triton']}, "
             f"sources sha256 {table['sources_sha256']}, {table['seconds']} s. Generated by "
             "`python -m benchmarks.gpu_static` (see its docstring); est_step_us is a model, not a "
             "measurement.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = []
        for col in COLUMNS:
            v = r.get(col, "")
            cells.append("; ".join(v) if isinstance(v, list) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(out: Path, table: dict) -> None:
    """gpu_static_sm<arch>.json (the table: arch, triton, sources_sha256, seconds, rows)
    and .md (the rows as Markdown)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"gpu_static_sm{table['arch']}.json").write_text(json.dumps(table, indent=1) + "\n")
    (out / f"gpu_static_sm{table['arch']}.md").write_text(markdown(table))


def read_table(path: Path):
    """A table written by write_table, or None; tables from before the source hash (a
    bare list of rows) read as having none."""
    if not path.exists():
        return None
    table = json.loads(path.read_text())
    return {"rows": table, "sources_sha256": None} if isinstance(table, list) else table


def summary(table: dict, selection: list) -> list:
    rows = table["rows"]
    recurrent = [r for r in rows if r["kernel"] == "recurrent"]
    headline = sum(1 for p in selection if p.mode is not None
                   or (p.B in HEADLINE_BATCHES and p.H in HEADLINE_HIDDENS))
    others = collections.Counter(h.split(":")[0] for r in rows for h in r["hazards"]
                                 if h.split(":")[0] not in FATAL)
    fatal = [r for r in rows if fatal_hazards(r)]
    lines = [f"sm_{table['arch']}: {len(rows)} configurations ({len(recurrent)} recurrent, of them "
             f"{headline} on the headline grid; {len(rows) - len(recurrent)} softmax / sampling) in "
             f"{table['seconds']} s; {len(fatal)} with a fatal hazard; other hazards: "
             + (", ".join(f"{k} {n}" for k, n in sorted(others.items())) or "none")]
    lines += [f"  FATAL {_describe(r)}: {'; '.join(fatal_hazards(r))[:300]}" for r in fatal[:20]]
    if len(fatal) > 20:
        lines.append(f"  ... and {len(fatal) - 20} more (see the table)")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, action="append", choices=sorted(LIMITS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--ci", action="store_true",
                        help="CI: the headline grid and a fixed sample, compared with the committed tables")
    parser.add_argument("--quick", action="store_true", help="a smaller grid (development)")
    parser.add_argument("--out", type=Path, help="where the tables go (default: the committed "
                        "tables for the full grid, build/gpu-static otherwise)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        sys.exit("gpu_static: unset TRITON_INTERPRET (the interpreter replaces the kernels it compiles)")
    selection = problems(args.quick)
    if args.ci:
        selection = [p for p in selection if in_ci_sample(p)]
    out = args.out or (SCRATCH if args.ci or args.quick else RESULTS)
    digest = sources_hash()
    failed, stale = False, []
    for arch in args.arch or [90, 80]:
        start = time.time()
        rows = run(arch, args.jobs, selection)
        table = {"arch": arch, "triton": triton.__version__, "sources_sha256": digest,
                 "seconds": round(time.time() - start), "rows": rows}
        write_table(out, table)
        lines = summary(table, selection)
        failed |= any(fatal_hazards(r) for r in rows)
        if args.ci:
            fresh, more, differs = verify(table, RESULTS)
            lines += more
            failed |= differs
            if not fresh:
                stale.append(arch)
        lines.append(f"  tables: {out}")
        print("\n".join(lines), flush=True)
    if stale:
        print(f"gpu_static: the kernel, planner or check sources (or the Triton version) changed since "
              f"the committed tables of sm_{', sm_'.join(map(str, stale))} were made: run "
              "`make gpu-static-full` (the whole grid, about 40 min on 2 cores with a cold Triton "
              "cache) and commit benchmarks/results/gpu_static_sm*.json and .md.", file=sys.stderr)
    return 1 if failed or stale else 0


if __name__ == "__main__":
    sys.exit(main())
