"""Gradient-parity check of every fastrnn backend this machine can run, against torch.

    python -m fastrnn.check                    # every op, backend, dtype and shape this machine allows
    python -m fastrnn.check --quick            # tiny shapes only (skips the headline size on a GPU)
    python -m fastrnn.check --ops lstm,gru --backends triton --json check.json

Run it after installing fastrnn on a new GPU, driver, CUDA or Triton version. For each
backend (triton, ext, reference), op, dtype and shape it compares fastrnn's outputs and
every gradient with torch's own computation, under the tolerances of fastrnn.testing
(its module docstring), prints one row per check and exits 1 when any check fails.

- LSTM, GRU and RNN (tanh, relu) run as the drop-in modules fastrnn.LSTM / GRU / RNN with
  the weights of a torch.nn module, against that module and a loop of its cell
  (nn.LSTMCell, nn.GRUCell, nn.RNNCell) evaluated in float64; the loss
  sum(output * g) + sum(h_n * g') (+ c_n) reaches the final states too.
- softmax and log_softmax (temperature 0.7) against torch.softmax / torch.log_softmax.
- sampling: the kept set of top-k, top-p and min-p (per-row parameters, a greedy row, a
  row of ties) must equal the sort-based reference's exactly, and every drawn token must
  lie in it.

Shapes: a tiny case everywhere; on a GPU also the headline size of benchmarks/cases.py
(LSTM/GRU/RNN B=16 T=1024 H=768; softmax and sampling 32 x 128256). Without a GPU the
Triton kernels run under the Triton interpreter (tiny shapes, no bfloat16).

TF32: on a GPU the float32 checks run with TF32 off (exact float32, the float32
tolerance), and the recurrent layers at the headline size also with TF32 on
(torch.backends.cudnn.allow_tf32 and cuda.matmul.allow_tf32 True; the error may be at most
2x that of torch's own TF32 computation, cuDNN's nn.LSTM / nn.GRU / nn.RNN). On CPU TF32
does not apply.
"""
import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

import fastrnn
from fastrnn import backends, testing
from fastrnn.ops.sampling import reference as sampling_reference

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TEMPERATURE = 0.7
# Draws per row, each from its own seed: few at the tiny size, where the interpreter takes
# a second per row (the statistics of the draws are the test suite's job).
SAMPLING_DRAWS = {"tiny": 2, "headline": 16}

# Rules (the `rule` column); the bounds come from fastrnn.testing.
TWICE_TORCH = "2x torch"  # max error <= 2 x torch's own same-precision error against fp64, + floor
EXACT = "exact"           # sampling: differing kept-set entries + draws outside it, must be 0
RULES = {
    TWICE_TORCH: f"float32/float16/bfloat16: max error vs float64 torch <= {testing.SAME_DTYPE_FACTOR:g} x "
                 "torch's own error in the same precision + max(4, sqrt(K)) ulp at max(|ref|, 1), K the "
                 "longest reduction",
    EXACT: "sampling: kept set identical to the sort-based reference's, every draw inside it",
}


@dataclasses.dataclass(frozen=True)
class Case:
    size: str                       # "tiny" or "headline"
    dims: Tuple[Tuple[str, int], ...]

    @property
    def dim(self) -> Dict[str, int]:
        return dict(self.dims)

    @property
    def shape(self) -> str:
        return "-".join(f"{k}{v}" for k, v in self.dims)


@dataclasses.dataclass(frozen=True)
class Setting:
    dtype: torch.dtype
    tf32: Optional[bool]  # None where TF32 does not apply (CPU, 16-bit dtypes, softmax, sampling)

    @property
    def label(self) -> str:
        return "-" if self.tf32 is None else ("on" if self.tf32 else "off")


@dataclasses.dataclass
class Measure:
    """The worst comparison of a check: `error` against `bound` under `rule`, on `worst`."""
    rule: str
    error: float
    bound: float
    worst: str

    @property
    def ratio(self) -> float:
        if self.bound > 0:
            return self.error / self.bound
        return 0.0 if self.error == 0 else math.inf

    @property
    def passed(self) -> bool:
        return math.isfinite(self.error) and self.error <= self.bound


@dataclasses.dataclass
class Row:
    backend: str
    op: str
    dtype: str
    shape: str
    tf32: str
    rule: str
    error: Optional[float]
    bound: Optional[float]
    verdict: str          # "ok", "FAIL" (out of tolerance) or "ERROR" (raised)
    seconds: float
    worst: str            # the tensor (and oracle) with the largest error / bound, or the exception


# ---------------------------------------------------------------------------- comparisons

def compare(ours: Dict[str, torch.Tensor], oracles: Dict[str, Dict[str, torch.Tensor]],
            baseline: Dict[str, torch.Tensor], reduction_length: int) -> Measure:
    """The worst tensor over every oracle under the same-dtype rule (fastrnn.testing):
    `ours`, `baseline` (torch's own result in the same dtype) and each oracle map the same
    tensor names (outputs and gradients) to values; `reduction_length` is the longest
    reduction feeding them."""
    worst = None
    for oracle_name, oracle in oracles.items():
        for name, expected in oracle.items():
            actual = ours[name]
            error = testing.max_abs_err(actual, expected)
            bound = testing.baseline_bound(baseline[name], expected, actual.dtype,
                                           reduction_length=reduction_length)
            measure = Measure(TWICE_TORCH, error if math.isfinite(error) else math.inf, bound,
                              f"{name} vs {oracle_name}")
            if worst is None or not measure.ratio <= worst.ratio:
                worst = measure
    return worst


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 for cuDNN and for matmuls on (as a user may set it) or off (exact float32)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@contextlib.contextmanager
def forced_backend(name: str) -> Iterator[None]:
    """Route fastrnn's modules to one backend, the way a user forces one (FASTRNN_BACKEND)."""
    old = os.environ.get(backends.ENV_VAR)
    os.environ[backends.ENV_VAR] = name
    try:
        yield
    finally:
        if old is None:
            del os.environ[backends.ENV_VAR]
        else:
            os.environ[backends.ENV_VAR] = old


# ---------------------------------------------------------------------------- the ops

class Op:
    """One op's checks. `memo` caches inputs, oracles and baselines for one case, so every
    backend and setting of that case is compared with the same computation."""
    name: str
    backend_op: str            # the op's name in fastrnn.backends and fastrnn/ops/<name>/
    tiny: Tuple[Tuple[str, int], ...]
    headline: Tuple[Tuple[str, int], ...]

    def cases(self, on_gpu: bool, quick: bool) -> List[Case]:
        sizes = [Case("tiny", self.tiny)]
        if on_gpu and not quick:
            sizes.append(Case("headline", self.headline))
        return sizes

    def settings(self, on_gpu: bool, case: Case) -> List[Setting]:
        return [Setting(dt, None) for dt in DTYPES.values()]

    def why_unavailable(self, backend: str, device: torch.device, dtype: torch.dtype) -> Optional[str]:
        why = backends._why_unavailable(backend, device.type, self.backend_op)
        if why is None and backend != "reference" and \
                importlib.util.find_spec(f"fastrnn.ops.{self.backend_op}.{backend}") is None:
            why = f"fastrnn/ops/{self.backend_op}/{backend}.py does not exist"
        if why is None and backend == "triton" and device.type == "cpu" and dtype == torch.bfloat16:
            why = "the Triton interpreter has no bfloat16"
        return why

    def measure(self, backend: str, case: Case, setting: Setting, device, memo: dict) -> Measure:
        raise NotImplementedError


def _memo(memo: dict, key, make: Callable):
    if key not in memo:
        memo[key] = make()
    return memo[key]


@dataclasses.dataclass(frozen=True)
class Recurrent(Op):
    """A recurrent layer: fastrnn's drop-in module against the torch.nn module and cell."""
    name: str
    backend_op: str
    fastrnn_module: Callable
    torch_module: Callable
    torch_cell: Callable
    kwargs: Tuple[Tuple[str, str], ...] = ()
    tiny: Tuple[Tuple[str, int], ...] = (("T", 7), ("B", 3), ("I", 5), ("H", 20))
    headline: Tuple[Tuple[str, int], ...] = (("T", 1024), ("B", 16), ("I", 768), ("H", 768))

    @property
    def has_cell_state(self) -> bool:
        return self.torch_module is torch.nn.LSTM

    def settings(self, on_gpu: bool, case: Case) -> List[Setting]:
        """float32 with TF32 off on a GPU, and also on at the headline size only: at the tiny
        size (H=20) cuDNN may keep exact float32 math, and the 2x rule would then hold a
        TF32 kernel to float32 accuracy."""
        if not on_gpu:
            fp32 = [Setting(torch.float32, None)]
        elif case.size == "headline":
            fp32 = [Setting(torch.float32, False), Setting(torch.float32, True)]
        else:
            fp32 = [Setting(torch.float32, False)]
        return fp32 + [Setting(torch.float16, None), Setting(torch.bfloat16, None)]

    def inputs(self, case: Case, dtype, device):
        """torch.nn module in `dtype`, x, initial states and output cotangents (all random, fixed seed)."""
        d = case.dim
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)  # the module's own initialisation
        module = self.torch_module(d["I"], d["H"], **dict(self.kwargs)).to(device=device, dtype=dtype)
        rand = lambda *shape: torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)  # noqa: E731
        x = rand(d["T"], d["B"], d["I"])
        states = {"h0": rand(d["B"], d["H"])}
        if self.has_cell_state:
            states["c0"] = rand(d["B"], d["H"])
        outputs = ["output", "h_n"] + (["c_n"] if self.has_cell_state else [])
        shapes = {"output": x.shape[:2] + (d["H"],), "h_n": (d["B"], d["H"]), "c_n": (d["B"], d["H"])}
        cotangents = {n: rand(*shapes[n]) for n in outputs}
        return module, x, states, cotangents

    def run_layer(self, module, x, states, cotangents) -> Dict[str, torch.Tensor]:
        """Outputs and the gradients of x, the initial states and every parameter of a
        one-layer module taking torch.nn's arguments (nn.LSTM or fastrnn.LSTM, ...)."""
        x = x.detach().requires_grad_()
        states = {k: v.detach().requires_grad_() for k, v in states.items()}
        h0 = states["h0"][None]
        hx = (h0, states["c0"][None]) if self.has_cell_state else h0
        y, h_n = module(x, hx)
        outs = {"output": y}
        if self.has_cell_state:
            h_n, c_n = h_n
            outs["c_n"] = c_n[0]
        outs["h_n"] = h_n[0]
        return self._with_grads(outs, cotangents, x, states, dict(module.named_parameters()))

    def run_cell_loop(self, module, x, states, cotangents) -> Dict[str, torch.Tensor]:
        """The same layer as a Python loop over torch.nn's cell, with the module's weights."""
        cell = self.torch_cell(module.input_size, module.hidden_size, **dict(self.kwargs)).to(
            device=x.device, dtype=x.dtype)
        params = {f"{n}_l0": p for n, p in cell.named_parameters()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(getattr(module, name))
        x = x.detach().requires_grad_()
        states = {k: v.detach().requires_grad_() for k, v in states.items()}
        state = (states["h0"], states["c0"]) if self.has_cell_state else states["h0"]
        ys = []
        for x_t in x.unbind(0):
            state = cell(x_t, state)
            ys.append(state[0] if self.has_cell_state else state)
        outs = {"output": torch.stack(ys), "h_n": ys[-1]}
        if self.has_cell_state:
            outs["c_n"] = state[1]
        return self._with_grads(outs, cotangents, x, states, params)

    @staticmethod
    def _with_grads(outs, cotangents, x, states, params) -> Dict[str, torch.Tensor]:
        leaves = {"input": x, **states, **params}
        grads = torch.autograd.grad(list(outs.values()), list(leaves.values()),
                                    [cotangents[n].to(o.dtype) for n, o in outs.items()])
        return {**{n: o.detach() for n, o in outs.items()},
                **{f"d_{n}": g for n, g in zip(leaves, grads)}}

    def oracles(self, case: Case, dtype, device, memo) -> Dict[str, Dict[str, torch.Tensor]]:
        """float64 torch on the very values the check feeds fastrnn: the module, and on the
        tiny case also the cell loop (at T=1024 it adds seconds per dtype and nothing new)."""
        module, x, states, cot = _memo(memo, ("inputs", dtype), lambda: self.inputs(case, dtype, device))
        module64 = self.torch_module(module.input_size, module.hidden_size, **dict(self.kwargs)).to(
            device=device, dtype=torch.float64)
        module64.load_state_dict(module.state_dict())
        x64, states64 = x.double(), {k: v.double() for k, v in states.items()}
        oracles = {f"nn.{self.torch_module.__name__}": self.run_layer(module64, x64, states64, cot)}
        if case.size == "tiny":
            oracles[f"nn.{self.torch_cell.__name__}"] = self.run_cell_loop(module64, x64, states64, cot)
        return oracles

    def measure(self, backend, case, setting, device, memo) -> Measure:
        dtype = setting.dtype
        module, x, states, cot = _memo(memo, ("inputs", dtype), lambda: self.inputs(case, dtype, device))
        oracles = _memo(memo, ("oracles", dtype), lambda: self.oracles(case, dtype, device, memo))
        with tf32(bool(setting.tf32)):
            baseline = _memo(memo, ("baseline", dtype, setting.tf32),
                             lambda: self.run_layer(module, x, states, cot))
            ours_module = self.fastrnn_module(module.input_size, module.hidden_size,
                                              **dict(self.kwargs)).to(device=device, dtype=dtype)
            ours_module.load_state_dict(module.state_dict())
            with forced_backend(backend):
                ours = self.run_layer(ours_module, x, states, cot)
        d = case.dim
        gates = {torch.nn.LSTM: 4, torch.nn.GRU: 3}.get(self.torch_module, 1)
        return compare(ours, oracles, baseline,
                       testing.recurrent_reduction_length(d["T"], d["B"], d["I"], d["H"], gates))


@dataclasses.dataclass(frozen=True)
class Softmax(Op):
    """fastrnn.softmax / log_softmax at temperature 0.7 against torch's, output and gradient."""
    name: str
    log: bool
    backend_op: str = "softmax"
    tiny: Tuple[Tuple[str, int], ...] = (("B", 4), ("V", 300))
    headline: Tuple[Tuple[str, int], ...] = (("B", 32), ("V", 128256))

    def torch_fn(self, x):
        return (torch.log_softmax if self.log else torch.softmax)(x / TEMPERATURE, dim=-1)

    def ours_fn(self, x, backend):
        return (fastrnn.log_softmax if self.log else fastrnn.softmax)(x, TEMPERATURE, backend=backend)

    @staticmethod
    def run(fn, x, cotangent) -> Dict[str, torch.Tensor]:
        x = x.detach().requires_grad_()
        y = fn(x)
        (dx,) = torch.autograd.grad(y, x, cotangent.to(y.dtype))
        return {"output": y.detach(), "d_input": dx}

    def measure(self, backend, case, setting, device, memo) -> Measure:
        dtype = setting.dtype
        d = case.dim

        def make_inputs():
            gen = torch.Generator().manual_seed(0)
            x = (torch.randn(d["B"], d["V"], generator=gen) * 3).to(device=device, dtype=dtype)
            return x, torch.randn(d["B"], d["V"], generator=gen).to(device=device, dtype=dtype)
        x, cot = _memo(memo, ("inputs", dtype), make_inputs)
        oracle = _memo(memo, ("oracle", dtype), lambda: self.run(self.torch_fn, x.double(), cot.double()))
        baseline = self.run(self.torch_fn, x, cot)
        ours = self.run(lambda v: self.ours_fn(v, backend), x, cot)
        return compare(ours, {f"torch.{'log_' if self.log else ''}softmax": oracle}, baseline,
                       reduction_length=d["V"])


@dataclasses.dataclass(frozen=True)
class Sampling(Op):
    """fastrnn.sampling_mask and fastrnn.sample against the sort-based reference."""
    name: str = "sampling"
    backend_op: str = "sampling"
    tiny: Tuple[Tuple[str, int], ...] = (("B", 6), ("V", 100))
    headline: Tuple[Tuple[str, int], ...] = (("B", 32), ("V", 128256))

    @staticmethod
    def inputs(case: Case, dtype, device):
        """Logits and per-row parameters: every filter on and off somewhere, a row of tied
        logits, a greedy row (temperature 0)."""
        B, V = case.dim["B"], case.dim["V"]
        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(B, V, generator=gen) * 3
        logits[1] = torch.randint(-3, 3, (V,), generator=gen).float()
        temperature = torch.rand(B, generator=gen) + 0.3
        temperature[2] = 0.0
        top_k = torch.randint(1, V + 1, (B,), generator=gen)
        top_k[0] = V
        top_p = torch.rand(B, generator=gen).double() * 0.99 + 0.01
        top_p[3] = 1.0
        min_p = torch.rand(B, generator=gen) * 0.3
        min_p[-1] = 0.0
        params = [p.to(device) for p in (temperature, top_k, top_p, min_p)]
        return logits.to(device=device, dtype=dtype), params

    @staticmethod
    def expected_mask(logits, params, backend) -> torch.Tensor:
        """The sort-based reference's kept set. The CPU paths reproduce the reference's
        probabilities bit for bit, so they must match it as is; the Triton kernel filters
        the Triton softmax's probabilities (checked by the softmax rows), so the reference
        filters those, and one rounding of a probability cannot decide the verdict."""
        if backend != "triton":
            return sampling_reference.kept_mask(logits, *params)
        temperature, top_k, top_p, min_p = params
        t = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
        probs = fastrnn.softmax(logits.float(), t, backend=backend)
        mask = sampling_reference.kept_mask_from_probs(probs, top_k, top_p, min_p)
        greedy = (temperature == 0)[:, None]
        return torch.where(greedy, sampling_reference.greedy_mask(logits), mask)

    def measure(self, backend, case, setting, device, memo) -> Measure:
        logits, params = self.inputs(case, setting.dtype, device)
        mask = fastrnn.sampling_mask(logits, *params, backend=backend)
        differing = int((mask != self.expected_mask(logits, params, backend)).sum())
        if differing:
            return Measure(EXACT, differing, 0, f"kept set: {differing} entries differ from the reference")
        draws = SAMPLING_DRAWS[case.size]
        rows = logits.repeat(draws, 1)
        seeds = torch.arange(rows.shape[0], device=device)
        tokens = fastrnn.sample(rows, *[p.repeat(draws) for p in params], seed=seeds, backend=backend)
        outside = int((~mask.repeat(draws, 1).gather(1, tokens[:, None])).sum())
        return Measure(EXACT, outside, 0, f"{outside} of {tokens.numel()} draws outside the kept set"
                       if outside else f"kept set equal, {tokens.numel()} draws inside it")


def all_ops() -> Dict[str, Op]:
    ops = [Recurrent("lstm", "lstm", fastrnn.LSTM, torch.nn.LSTM, torch.nn.LSTMCell),
           Recurrent("gru", "gru", fastrnn.GRU, torch.nn.GRU, torch.nn.GRUCell)]
    if hasattr(fastrnn, "RNN"):
        ops += [Recurrent(f"rnn_{f}", "rnn", fastrnn.RNN, torch.nn.RNN, torch.nn.RNNCell,
                          (("nonlinearity", f),)) for f in ("tanh", "relu")]
    ops += [Softmax("softmax", False), Softmax("log_softmax", True), Sampling()]
    return {op.name: op for op in ops}


# ---------------------------------------------------------------------------- running

def planned(ops: List[Op], backend_names: List[str], dtypes: List[torch.dtype], on_gpu: bool,
            quick: bool) -> Iterator[Tuple[Op, Case, Setting, str]]:
    """Every (op, case, setting, backend) in run order: the tiny cases of every op first, so
    a run cut short by a time limit has still covered every op."""
    for size in ("tiny", "headline"):
        for op in ops:
            for case in (c for c in op.cases(on_gpu, quick) if c.size == size):
                for setting in (s for s in op.settings(on_gpu, case) if s.dtype in dtypes):
                    for backend in backend_names:
                        yield op, case, setting, backend


NotRun = Dict[Tuple[str, str], Dict[str, List[str]]]  # {(backend, reason): {op (and shape): [dtypes]}}


def run_checks(ops: List[Op], backend_names: List[str], dtypes: List[torch.dtype], device: torch.device,
               quick: bool, emit: Callable[[Row], None]) -> NotRun:
    """Run every planned check, handing each row to `emit` as soon as it is done; returns
    what could not run here, and why."""
    not_run: NotRun = {}
    memo, memo_case = {}, None
    for op, case, setting, backend in planned(ops, backend_names, dtypes, device.type == "cuda", quick):
        why = op.why_unavailable(backend, device, setting.dtype)
        if why is not None:
            label = op.name if case.size == "tiny" else f"{op.name} {case.shape}"
            dtypes_not_run = not_run.setdefault((backend, why), {}).setdefault(label, [])
            if dtype_name(setting.dtype) not in dtypes_not_run:
                dtypes_not_run.append(dtype_name(setting.dtype))
            continue
        if memo_case != (op.name, case):  # hold one case's tensors at a time (the headline's are large)
            memo, memo_case = {}, (op.name, case)
        emit(run_one(op, backend, case, setting, device, memo))
    return not_run


def run_one(op: Op, backend: str, case: Case, setting: Setting, device, memo) -> Row:
    start = time.perf_counter()
    try:
        m = op.measure(backend, case, setting, device, memo)
        verdict, error, bound, rule, worst = ("ok" if m.passed else "FAIL"), m.error, m.bound, m.rule, m.worst
    except Exception as exc:  # a backend that raises fails its check; the others still run
        message = " ".join(str(exc).split())[:200]
        verdict, error, bound, rule, worst = "ERROR", None, None, "-", f"{type(exc).__name__}: {message}"
    if device.type == "cuda":
        torch.cuda.synchronize()
    return Row(backend, op.name, dtype_name(setting.dtype), case.shape, setting.label, rule, error, bound,
               verdict, time.perf_counter() - start, worst)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------------------- output

COLUMNS = "{:9} {:11} {:8} {:20} {:4} {:8} {:>9} {:>9} {:7} {:>6}  {}"


def format_row(row: Row) -> str:
    def num(v):
        if v is None:
            return "-"
        if row.rule == EXACT:  # counts
            return str(int(v))
        return "inf" if v == math.inf else f"{v:.2e}"
    return COLUMNS.format(row.backend, row.op, row.dtype, row.shape, row.tf32, row.rule, num(row.error),
                          num(row.bound), row.verdict, f"{row.seconds:.2f}", row.worst)


def table_header() -> str:
    return COLUMNS.format("backend", "op", "dtype", "shape", "tf32", "rule", "error", "bound", "verdict",
                          "secs", "worst tensor vs oracle, or detail")


def _commit() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _driver_version() -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one) and the widest vector
    instructions PyTorch uses on it (torch.backends.cpu.get_cpu_capability(), e.g. AVX2 or
    AVX512), which decide the speed of both libraries' CPU kernels."""
    name = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def environment(device: torch.device) -> Dict[str, str]:
    """What the header prints (and the JSON keeps): versions, device, TF32, backends."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    commit = _commit()
    env = {"fastrnn": fastrnn.__version__ + (f" (commit {commit})" if commit else ""),
           "torch": torch.__version__, "triton": triton_version, "python": sys.version.split()[0]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["device"] = f"{props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs)"
        env["driver / CUDA"] = (f"driver {_driver_version() or 'unknown'}, CUDA runtime {torch.version.cuda}, "
                                f"cuDNN {torch.backends.cudnn.version()}")
        env["TF32"] = ("float32 with tf32 off (cuDNN and matmul TF32 disabled: exact float32) and, at the "
                       "headline size, on (both enabled; bound: 2x torch's own TF32 error); this "
                       f"process started with cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
                       f"cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}")
        env["triton kernels"] = "compiled for this GPU"
    else:
        env["device"] = f"{cpu_model()} (no CUDA GPU)"
        env["TF32"] = "not applicable on CPU: every float32 check runs in exact float32"
        env["triton kernels"] = ("Triton interpreter (TRITON_INTERPRET=1), tiny shapes, no bfloat16"
                                 if backends.interpreter_enabled() else "not run (TRITON_INTERPRET is not 1)")
    ext = backends.ext_module()
    env["extension fastrnn._C"] = "built" if ext is not None else "not built"
    return env


def print_header(env: Dict[str, str]):
    for key, value in env.items():
        print(f"{key + ':':22} {value}")
    print("rules:")
    for rule, text in RULES.items():
        print(f"  {rule:8} {text}")
    print("\n" + table_header(), flush=True)


def write_json(path: str, env: Dict[str, str], rows: List[Row], not_run: NotRun, summary_line: str):
    with open(path, "w") as f:
        json.dump({"environment": env, "rows": [dataclasses.asdict(r) for r in rows],
                   "not_run": [{"backend": b, "reason": why, "dtypes_by_op": ops}
                               for (b, why), ops in not_run.items()],
                   "summary": summary_line}, f, indent=1)


def print_not_run(not_run: NotRun):
    """One line per backend and reason; ops missing the same dtypes share a group."""
    if not_run:
        print("\nnot run here:")
    for (backend, why), ops in not_run.items():
        groups: Dict[Tuple[str, ...], List[str]] = {}
        for op, dtypes in ops.items():
            groups.setdefault(tuple(dtypes), []).append(op)
        what = "; ".join(f"{', '.join(names)} ({', '.join(dtypes)})" for dtypes, names in groups.items())
        print(f"  {backend:9} {what}: {why}")


def summary(rows: List[Row], seconds: float, interrupted: bool) -> str:
    failed = [r for r in rows if r.verdict != "ok"]
    text = (f"fastrnn.check: {len(rows)} checks, {len(rows) - len(failed)} passed, {len(failed)} failed "
            f"in {seconds:.1f} s")
    if interrupted:
        text += " (interrupted: later checks did not run)"
    if not rows:
        text += " (nothing was checked)"
    return text + (": FAIL" if failed or interrupted or not rows else ": OK")


# ---------------------------------------------------------------------------- command

def device_argument(name: str) -> torch.device:
    """argparse type of a --device option: "auto" (cuda when torch sees a GPU, else cpu),
    "cpu", "cuda" or "cuda:N". A CUDA device this torch cannot use raises
    argparse.ArgumentTypeError (argparse prints it and exits with status 2), instead of
    torch's "AssertionError: Torch not compiled with CUDA enabled" at the first tensor."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        why = ("this torch is a CPU-only build" if torch.version.cuda is None
               else "torch sees no GPU (driver, CUDA_VISIBLE_DEVICES?)")
        raise argparse.ArgumentTypeError(
            f"no CUDA device is available: {why} (torch {torch.__version__}); use --device cpu")
    return device


def parse_args(argv=None):
    ops = list(all_ops())
    p = argparse.ArgumentParser(prog="python -m fastrnn.check", description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", type=lambda s: s.split(","), default=ops,
                   help="comma-separated subset of " + ",".join(ops))
    p.add_argument("--backends", type=lambda s: s.split(","), default=list(backends.BACKENDS),
                   help="comma-separated subset of " + ",".join(backends.BACKENDS))
    p.add_argument("--dtypes", type=lambda s: s.split(","), default=list(DTYPES),
                   help="comma-separated subset of " + ",".join(DTYPES))
    p.add_argument("--quick", action="store_true", help="tiny shapes only (no headline size on a GPU)")
    p.add_argument("--device", type=device_argument, default="auto",
                   help="auto (cuda when present), cuda or cpu")
    p.add_argument("--json", metavar="PATH", help="also write the environment and every row to PATH")
    args = p.parse_args(argv)
    for name, chosen, allowed in (("ops", args.ops, ops), ("backends", args.backends, backends.BACKENDS),
                                  ("dtypes", args.dtypes, DTYPES)):
        unknown = sorted(set(chosen) - set(allowed))
        if unknown:
            p.error(f"unknown {name} {unknown}; choose from {','.join(allowed)}")
    return args


def main(argv=None) -> int:
    """Run the checks; returns the exit status (1 if any check failed or none ran)."""
    args = parse_args(argv)
    device = args.device
    env = environment(device)
    print_header(env)
    ops = [op for name, op in all_ops().items() if name in args.ops]
    rows: List[Row] = []

    def emit(row: Row):
        rows.append(row)
        print(format_row(row), flush=True)

    start, interrupted, not_run = time.perf_counter(), False, {}
    try:
        with tf32(False), warnings.catch_warnings():
            # numpy warns where the interpreter takes log2(0) = -inf, which a GPU does silently
            warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"triton\.runtime\.interpreter")
            dtypes = [DTYPES[d] for d in args.dtypes]
            not_run = run_checks(ops, args.backends, dtypes, device, args.quick, emit)
    except KeyboardInterrupt:  # a time limit (scripts/gpu_run.sh): report what finished
        interrupted = True
    print_not_run(not_run)
    line = summary(rows, time.perf_counter() - start, interrupted)
    print("\n" + line, flush=True)
    if args.json:
        write_json(args.json, env, rows, not_run, line)
    return 1 if line.endswith("FAIL") else 0


def _restart_with_interpreter() -> bool:
    """Without a GPU the Triton kernels need TRITON_INTERPRET=1 before triton is imported,
    and `python -m fastrnn.check` has imported the fastrnn package (and with it torch and
    triton) before this module runs: so the command starts itself again once, with the
    variable set (as tests/conftest.py sets it first). An explicit value is respected."""
    return not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ


if __name__ == "__main__":
    if _restart_with_interpreter():
        os.environ["TRITON_INTERPRET"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "fastrnn.check", *sys.argv[1:]])
    sys.exit(main())
