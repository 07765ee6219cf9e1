"""What the benchmarks time: cases (kernel, shape, dtype), providers and modes.

One definition shared by the pytest-benchmark files (benchmarks/bench_*.py) and the
runner (python -m benchmarks.run). A provider either builds a callable for a case or
says why it cannot run here; nothing is ever substituted for a missing provider.

Kernels and providers:
  lstm, gru,  fastrnn-triton, fastrnn-ext, nn (cuDNN on GPU, ATen/oneDNN on CPU; the
  rnn         baseline), reference (plain PyTorch cell loop with autograd), compiled
              (the reference cell under torch.compile, in a Python loop). rnn is the
              Elman RNN with tanh (nn.RNN's default).
  softmax     fastrnn-triton, torch (torch.softmax; the baseline)
  sampling    fastrnn-triton, fastrnn-ext (the C++ sampler, fastrnn.sample's CPU path),
              fastrnn-vectorized (the sort-free PyTorch path, its fallback), hf-warpers
              (Hugging Face's temperature and top-p warpers then torch.multinomial, what a
              PyTorch user runs: the baseline; benchmarks/sampling_baseline.py), torch-sort
              (fastrnn's exact sort-based reference, the tests' oracle).
              All draw top-p 0.9 at temperature 0.8.

Modes: "forward" (a training forward, autograd recording), "backward" (backward only,
on a retained graph), "forward+backward". Softmax and sampling are timed in forward only.
"""
import dataclasses
import importlib.util
from typing import Callable, Dict, List, Optional, Tuple

import torch

import fastrnn
from fastrnn import backends
from fastrnn import functional
from fastrnn.ops.gru import reference as gru_reference
from fastrnn.ops.lstm import reference as lstm_reference
from fastrnn.ops.rnn import reference as rnn_reference
from fastrnn.ops.sampling import reference as sampling_reference

from benchmarks.sampling_baseline import hf_top_p_sample

RNN_MODES = ("forward", "backward", "forward+backward")
SAMPLING_MODES = ("forward",)
RECURRENT = ("lstm", "gru", "rnn")
BASELINE = {"lstm": "nn", "gru": "nn", "rnn": "nn", "softmax": "torch", "sampling": "hf-warpers"}
TOP_P = 0.9
TEMPERATURE = 0.8


@dataclasses.dataclass(frozen=True)
class Case:
    kernel: str                   # "lstm", "gru", "rnn", "softmax", "sampling"
    dims: Tuple[Tuple[str, int], ...]   # (("B", 16), ("T", 1024), ("H", 768)) or (("B", 1), ("V", 32000))
    dtype: torch.dtype

    @property
    def dim(self) -> Dict[str, int]:
        return dict(self.dims)

    @property
    def shape(self) -> str:
        return "-".join(f"{k}{v}" for k, v in self.dims)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    @property
    def is_rnn(self) -> bool:
        return self.kernel in RECURRENT

    @property
    def modes(self) -> Tuple[str, ...]:
        return RNN_MODES if self.is_rnn else SAMPLING_MODES

    @property
    def tokens(self) -> int:
        """Tokens processed per call: B*T for a recurrent layer, one per row when sampling."""
        d = self.dim
        return d["B"] * d["T"] if self.is_rnn else d["B"]

    def bytes_moved(self, mode: str) -> Optional[int]:
        """The unavoidable memory traffic of one call (softmax: read logits, write probs;
        sampling: read logits), for GB/s; None for the recurrent layers."""
        if self.is_rnn:
            return None
        d = self.dim
        elems = d["B"] * d["V"] * torch.finfo(self.dtype).bits // 8
        return 2 * elems if self.kernel == "softmax" else elems


def rnn(kernel: str, B: int, T: int, H: int, dtype: torch.dtype) -> Case:
    return Case(kernel, (("B", B), ("T", T), ("H", H)), dtype)


def vocab(kernel: str, B: int, V: int, dtype: torch.dtype) -> Case:
    return Case(kernel, (("B", B), ("V", V)), dtype)


# ---------------------------------------------------------------------------- sweeps

def gpu_sweep(kernels) -> List[Case]:
    """The GPU sweep: the headline LSTM/GRU B=16 T=1024 H=768 in fp16, bf16 and fp32;
    B in {1, 8, 64, 256} x H in {256, 512, 1024, 2048} (T=256, bf16); sampling and
    softmax B in {1, 32, 256} x V in {32000, 128256} (fp32 logits). Every kernel's
    headline cases come first, so a time-limited run still covers each kernel."""
    headline, rest = [], []
    for kernel in kernels:
        if kernel in RECURRENT:
            headline += [rnn(kernel, 16, 1024, 768, dt) for dt in (torch.float32, torch.bfloat16, torch.float16)]
            rest += [rnn(kernel, B, 256, H, torch.bfloat16) for B in (1, 8, 64, 256) for H in (256, 512, 1024, 2048)]
        else:
            headline += [vocab(kernel, 32, V, torch.float32) for V in (32000, 128256)]
            rest += [vocab(kernel, B, V, torch.float32) for B in (1, 256) for V in (32000, 128256)]
    return headline + rest


def cpu_sweep(kernels) -> List[Case]:
    """A reduced sweep that finishes in a few minutes on 2 cores: fp32 only, the headline
    shape with T cut to 64, B in {1, 8, 64} x H in {256, 512} at T=32, and the sampling
    shapes without B=256."""
    cases = []
    for kernel in kernels:
        if kernel in RECURRENT:
            cases.append(rnn(kernel, 16, 64, 768, torch.float32))
            cases += [rnn(kernel, B, 32, H, torch.float32) for B in (1, 8, 64) for H in (256, 512)]
        else:
            cases += [vocab(kernel, B, V, torch.float32) for B in (1, 32) for V in (32000, 128256)]
    return cases


# ---------------------------------------------------------------------------- inputs

def rnn_module(case: Case, device) -> torch.nn.Module:
    """nn.LSTM / nn.GRU / nn.RNN with input_size = hidden_size = H, its default random init."""
    H = case.dim["H"]
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[case.kernel]
    return cls(H, H, device=device, dtype=case.dtype)


def rnn_inputs(case: Case, device) -> Dict[str, torch.Tensor]:
    """Random x and initial state (never zeros), all requiring grad."""
    d = case.dim
    make = lambda *shape: torch.randn(*shape, device=device, dtype=case.dtype).requires_grad_()  # noqa: E731
    inputs = {"x": make(d["T"], d["B"], d["H"]), "h0": make(d["B"], d["H"])}
    if case.kernel == "lstm":
        inputs["c0"] = make(d["B"], d["H"])
    return inputs


def layer_weights(module: torch.nn.Module):
    return [module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0]


# ---------------------------------------------------------------------------- RNN providers

def _fastrnn_unavailable(backend: str, case: Case, device) -> Optional[str]:
    device_type = torch.device(device).type
    if backend == "triton":
        if importlib.util.find_spec(f"fastrnn.ops.{case.kernel}.triton") is None:
            return f"fastrnn/ops/{case.kernel}/triton.py does not exist yet"
        if device_type != "cuda":
            return "Triton kernels need a GPU (the interpreter is a testing tool, not timed)"
    why = backends._why_unavailable(backend, device_type, case.kernel)
    if why is None and case.dtype == torch.float64 and "fp64" not in backends.FEATURES[backend][case.kernel]:
        why = "no float64 kernels"
    return why


def _fastrnn_forward(backend: str):
    def build(case, module, inputs):
        w = layer_weights(module)
        if case.kernel == "lstm":
            return lambda: functional.lstm_layer(inputs["x"], inputs["h0"], inputs["c0"], *w, backend=backend)
        if case.kernel == "rnn":
            return lambda: functional.rnn_layer(inputs["x"], inputs["h0"], *w, backend=backend)
        return lambda: functional.gru_layer(inputs["x"], inputs["h0"], *w, backend=backend)
    return build


def _nn_forward(case, module, inputs):
    x, h0 = inputs["x"], inputs["h0"].unsqueeze(0)
    if case.kernel == "lstm":
        c0 = inputs["c0"].unsqueeze(0)
        return lambda: _flatten(module(x, (h0, c0)))
    return lambda: _flatten(module(x, h0))


def _flatten(out):
    y, state = out
    return (y, *state) if isinstance(state, tuple) else (y, state)


def _reference_forward(case, module, inputs):
    w = layer_weights(module)
    if case.kernel == "lstm":
        return lambda: lstm_reference.lstm_layer(inputs["x"], inputs["h0"], inputs["c0"], *w)
    if case.kernel == "rnn":
        return lambda: rnn_reference.rnn_layer(inputs["x"], inputs["h0"], *w)
    return lambda: gru_reference.gru_layer(inputs["x"], inputs["h0"], *w)


_COMPILED_CELLS: Dict[str, Callable] = {}


def _compiled_cell(kernel: str) -> Callable:
    """The reference cell under torch.compile, compiled once per kernel with dynamic shapes
    (compiling the whole T-step loop unrolls it and takes minutes for long sequences)."""
    if kernel not in _COMPILED_CELLS:
        cell = {"lstm": lstm_reference.lstm_cell, "gru": gru_reference.gru_cell,
                "rnn": rnn_reference.rnn_cell}[kernel]
        _COMPILED_CELLS[kernel] = torch.compile(cell, dynamic=True)
    return _COMPILED_CELLS[kernel]


def _compiled_forward(case, module, inputs):
    w_ih, w_hh, b_ih, b_hh = layer_weights(module)
    cell = _compiled_cell(case.kernel)

    def run():
        x_proj = torch.nn.functional.linear(inputs["x"], w_ih, b_ih)
        h, c, ys = inputs["h0"], inputs.get("c0"), []
        for t in range(x_proj.shape[0]):
            if case.kernel == "lstm":
                h, c, _ = cell(x_proj[t], h, c, w_hh, b_hh, None)
            elif case.kernel == "rnn":
                h = cell(x_proj[t], h, w_hh, b_hh, "tanh")
            else:
                h, _ = cell(x_proj[t], h, w_hh, b_hh)
            ys.append(h)
        return (torch.stack(ys), h) + ((c,) if c is not None else ())
    return run


RNN_PROVIDERS = {
    # name: (why_unavailable(case, device) -> reason or None, forward builder)
    "fastrnn-triton": (lambda c, d: _fastrnn_unavailable("triton", c, d), _fastrnn_forward("triton")),
    "fastrnn-ext": (lambda c, d: _fastrnn_unavailable("ext", c, d), _fastrnn_forward("ext")),
    "nn": (lambda c, d: None, _nn_forward),
    "reference": (lambda c, d: None, _reference_forward),
    # Where torch.compile does not work, its first call raises and the runner reports it.
    "compiled": (lambda c, d: None if c.dtype == torch.float32 else
                 "timed in float32 only (every dtype costs a fresh compilation)", _compiled_forward),
}


def rnn_callable(case: Case, provider: str, mode: str, device) -> Callable:
    """A no-argument callable running `provider` on `case` in `mode`."""
    module = rnn_module(case, device)
    inputs = rnn_inputs(case, device)
    forward = RNN_PROVIDERS[provider][1](case, module, inputs)
    wrt = list(inputs.values()) + layer_weights(module)
    if mode == "forward":
        return forward
    if mode == "forward+backward":
        def full():
            outs = forward()
            return torch.autograd.grad(outs, wrt, [torch.ones_like(o) for o in outs])
        return full
    outs = forward()
    grads = [torch.randn_like(o) for o in outs]
    return lambda: torch.autograd.grad(outs, wrt, grads, retain_graph=True)


# ---------------------------------------------------------------------------- softmax and sampling

def logits_for(case: Case, device) -> torch.Tensor:
    d = case.dim
    return torch.randn(d["B"], d["V"], device=device, dtype=case.dtype) * 3


def _row_params(logits: torch.Tensor):
    """Per-row temperature, top_k (V: off), top_p, min_p (0: off), as the sampling
    backends take them."""
    B, V = logits.shape
    full = lambda value, dtype: torch.full((B,), value, dtype=dtype, device=logits.device)  # noqa: E731
    return (full(TEMPERATURE, torch.float32), full(V, torch.int64), full(TOP_P, torch.float64),
            full(0.0, torch.float32))


def _vocab_unavailable(backend: str):
    def why(case: Case, device) -> Optional[str]:
        if backend == "triton" and torch.device(device).type != "cuda":
            return "Triton kernels need a GPU (the interpreter is a testing tool, not timed)"
        return backends._why_unavailable(backend, torch.device(device).type, case.kernel)
    return why


def vocab_callable(case: Case, provider: str, mode: str, device) -> Callable:
    logits = logits_for(case, device)
    generator = torch.Generator(device=device).manual_seed(0)
    if provider == "torch":
        return lambda: torch.softmax(logits / TEMPERATURE, dim=-1)
    if provider == "hf-warpers":
        return lambda: hf_top_p_sample(logits, TEMPERATURE, TOP_P, generator=generator)
    if provider == "torch-sort":
        params = _row_params(logits)
        return lambda: sampling_reference.sample(logits, *params, generator=generator)
    backend = {"fastrnn-triton": "triton", "fastrnn-ext": "ext"}.get(provider, "reference")
    if case.kernel == "softmax":
        return lambda: fastrnn.softmax(logits, temperature=TEMPERATURE, backend=backend)
    return lambda: fastrnn.sample(logits, temperature=TEMPERATURE, top_p=TOP_P, generator=generator,
                                  backend=backend)


VOCAB_PROVIDERS = {
    "softmax": {"fastrnn-triton": _vocab_unavailable("triton"), "torch": lambda c, d: None},
    # fastrnn-ext: the C++ sampler; fastrnn-vectorized: the sort-free PyTorch path.
    "sampling": {"fastrnn-triton": _vocab_unavailable("triton"),
                 "fastrnn-ext": _vocab_unavailable("ext"),
                 "fastrnn-vectorized": _vocab_unavailable("reference"),
                 "hf-warpers": lambda c, d: None,
                 "torch-sort": lambda c, d: None},
}


# ---------------------------------------------------------------------------- entry points

def providers_for(kernel: str) -> List[str]:
    """The kernel's providers, its baseline first (so every later row has its speedup)."""
    names = list(RNN_PROVIDERS) if kernel in RECURRENT else list(VOCAB_PROVIDERS[kernel])
    return [BASELINE[kernel]] + [n for n in names if n != BASELINE[kernel]]


def why_unavailable(case: Case, provider: str, device) -> Optional[str]:
    if case.is_rnn:
        reason = RNN_PROVIDERS[provider][0](case, device)
    else:
        reason = VOCAB_PROVIDERS[case.kernel][provider](case, device)
    if reason is None and torch.device(device).type == "cpu" and case.dtype in (torch.float16,):
        reason = "float16 is not timed on CPU"
    return reason


def make_callable(case: Case, provider: str, mode: str, device) -> Callable:
    builder = rnn_callable if case.is_rnn else vocab_callable
    return builder(case, provider, mode, device)
