"""The Triton BPTT kernel (fastrnn/ops/recurrent/backward.py) on its own.

The forward pass (y and the saved workspace) comes from the reference backend, so only the
backward is under test. Each result is compared with two independent references:
reference.*_layer_backward in float64 on the same saved forward, and torch.autograd through
torch.nn.LSTM / nn.GRU in float64 with the same weights. Low-precision results must stay
within SAME_DTYPE_FACTOR of PyTorch's own same-dtype autograd error (fastrnn.testing).
"""
import dataclasses
from typing import Optional, Tuple

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fastrnn.ops.gru import op as gru_op
from fastrnn.ops.gru import reference as gru_reference
from fastrnn.ops.lstm import op as lstm_op
from fastrnn.ops.lstm import reference as lstm_reference
from fastrnn.ops.recurrent import backward, common
from fastrnn.testing import assert_within_baseline, poisoned_empty, recurrent_reduction_length


@dataclasses.dataclass(frozen=True)
class Case:
    T: int
    B: int
    I: int
    H: int
    lengths: Optional[Tuple[int, ...]] = None
    bias: bool = True
    contiguous: bool = True   # False: x is a transposed (batch-first) view
    per_step: bool = False    # force one launch per step
    streamed: bool = False    # force W_hh streamed from L2 in K chunks (not kept on chip)

    def __str__(self):
        flags = [f"T{self.T}B{self.B}I{self.I}H{self.H}"]
        flags += ["lengths"] * (self.lengths is not None) + ["nobias"] * (not self.bias)
        flags += ["noncontig"] * (not self.contiguous) + ["perstep"] * self.per_step
        flags += ["streamed"] * self.streamed
        return "-".join(flags)


LENGTHS_65 = tuple(1 + (7 * b) % 3 for b in range(65))   # unsorted, 1..3

INTERPRETER_CASES = [
    Case(T=1, B=1, I=3, H=16),
    Case(T=1, B=3, I=3, H=20, per_step=True),
    Case(T=7, B=3, I=5, H=20),
    Case(T=7, B=3, I=5, H=20, per_step=True),
    Case(T=7, B=3, I=5, H=20, lengths=(4, 1, 7)),
    Case(T=7, B=3, I=5, H=20, lengths=(4, 1, 7), per_step=True),
    Case(T=4, B=1, I=6, H=20, bias=False, contiguous=False),
    Case(T=3, B=2, I=4, H=8, bias=False, contiguous=False, per_step=True),
    # Two programs along the batch (BLOCK_B <= 64).
    Case(T=3, B=65, I=4, H=8, lengths=LENGTHS_65),
    # W_hh streamed in K chunks of 16: H=37 takes three chunks, the last one partial.
    Case(T=6, B=3, I=5, H=37, lengths=(4, 1, 5), streamed=True),
    Case(T=4, B=2, I=5, H=37, per_step=True, streamed=True),
]
FP16_INTERPRETER_CASES = [
    Case(T=5, B=3, I=5, H=20, lengths=(5, 1, 3)),
    Case(T=5, B=3, I=5, H=20, per_step=True),
]


class LstmCell:
    name = "lstm"
    module = torch.nn.LSTM
    n_states = 2
    gates = 4
    grad_names = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "dbias")

    @staticmethod
    def forward(x, states, weights, lengths):
        y, h_t, c_t, workspace = lstm_op.reference_backend.forward(x, *states, *weights, None, lengths)
        return y, workspace

    @staticmethod
    def kernel_backward(grads, x, states, weights, y, workspace, lengths, per_step, streamed):
        w_ih, w_hh = weights[:2]
        return backward.lstm_backward(grads[0], grads[1], grads[2], x, *states, w_ih, w_hh, y,
                                      workspace, lengths, force_per_step=per_step,
                                      force_streamed=streamed)

    @staticmethod
    def reference_backward(grads, x, states, weights, y, workspace, lengths):
        w_ih, w_hh = weights[:2]
        return lstm_reference.lstm_layer_backward(*grads, x, *states, w_ih, w_hh, None, y, workspace,
                                                  lengths)[:6]

    @staticmethod
    def autograd_order(grads_by_leaf, bias):
        """Kernel output order from the autograd gradients of (x, h0, c0, w_ih, w_hh, b_ih, ...)."""
        dx, dh0, dc0, dw_ih, dw_hh = grads_by_leaf[:5]
        return (dx, dh0, dc0, dw_ih, dw_hh) + ((grads_by_leaf[5],) if bias else ())


class GruCell:
    name = "gru"
    module = torch.nn.GRU
    n_states = 1
    gates = 3
    grad_names = ("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh")

    @staticmethod
    def forward(x, states, weights, lengths):
        y, h_t, workspace = gru_op.reference_backend.forward(x, *states, *weights, lengths)
        return y, workspace

    @staticmethod
    def kernel_backward(grads, x, states, weights, y, workspace, lengths, per_step, streamed):
        w_ih, w_hh = weights[:2]
        return backward.gru_backward(grads[0], grads[1], x, states[0], w_ih, w_hh, y, workspace,
                                     lengths, force_per_step=per_step, force_streamed=streamed)

    @staticmethod
    def reference_backward(grads, x, states, weights, y, workspace, lengths):
        w_ih, w_hh = weights[:2]
        return gru_reference.gru_layer_backward(*grads, x, states[0], w_ih, w_hh, y, workspace,
                                                lengths)

    @staticmethod
    def autograd_order(grads_by_leaf, bias):
        return tuple(grads_by_leaf)


CELLS = [pytest.param(LstmCell, id="lstm"), pytest.param(GruCell, id="gru")]


@dataclasses.dataclass
class Problem:
    """One layer's inputs in the kernel dtype, and the float64 module holding the same values."""
    module64: torch.nn.Module
    x: torch.Tensor
    states: list
    weights: list             # w_ih, w_hh, b_ih, b_hh (biases None without bias)
    grads: list               # grad_y, grad_hT (, grad_cT)
    lengths: Optional[torch.Tensor]


def make_problem(cell, case: Case, dtype, device) -> Problem:
    module64 = cell.module(case.I, case.H, bias=case.bias, dtype=torch.float64, device=device)
    with torch.no_grad():   # the float64 module holds exactly the low-precision values
        for p in module64.parameters():
            p.copy_(p.to(dtype))
    names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    weights = [getattr(module64, n).detach().to(dtype) if hasattr(module64, n) else None
               for n in names]
    shape = (case.T, case.B, case.I) if case.contiguous else (case.B, case.T, case.I)
    x = torch.randn(shape, device=device).to(dtype)
    x = x if case.contiguous else x.transpose(0, 1)
    states = [torch.randn(case.B, case.H, device=device).to(dtype) for _ in range(cell.n_states)]
    grads = [torch.randn(case.T, case.B, case.H, device=device).to(dtype)]
    grads += [torch.randn(case.B, case.H, device=device).to(dtype) for _ in range(cell.n_states)]
    lengths = (torch.tensor(case.lengths, dtype=torch.int64, device=device)
               if case.lengths is not None else None)
    return Problem(module64, x, states, weights, grads, lengths)


def autograd_gradients(cell, module, problem: Problem, dtype):
    """Gradients of sum(y * grad_y) + sum(final states * their grads) through torch.nn in
    `dtype`, in the kernel's output order."""
    x = problem.x.to(dtype).requires_grad_()
    states = [s.to(dtype).requires_grad_() for s in problem.states]
    hx = tuple(s[None] for s in states) if cell.n_states == 2 else states[0][None]
    T = x.shape[0]
    if problem.lengths is not None:
        packed = pack_padded_sequence(x, problem.lengths.cpu(), enforce_sorted=False)
        out, final = module(packed, hx)
        y = pad_packed_sequence(out, total_length=T)[0]
    else:
        y, final = module(x, hx)
    finals = final if cell.n_states == 2 else (final,)
    loss = (y * problem.grads[0].to(dtype)).sum()
    loss = loss + sum((f[0] * g.to(dtype)).sum() for f, g in zip(finals, problem.grads[1:]))
    leaves = [x, *states, *module.parameters()]
    return cell.autograd_order(torch.autograd.grad(loss, leaves), bias=module.bias)


def run_kernel(cell, problem: Problem, per_step: bool, streamed: bool = False):
    # The saved forward as the fused forward makes it: fp32 math, y rounded to the input
    # dtype. (A 16-bit reference forward would add its own rounding to the backward's.)
    up = lambda t: t.float() if t is not None else None  # noqa: E731
    y, workspace = cell.forward(up(problem.x), [up(s) for s in problem.states],
                                [up(w) for w in problem.weights], problem.lengths)
    y = y.to(problem.x.dtype)
    with poisoned_empty():
        out = cell.kernel_backward(problem.grads, problem.x, problem.states, problem.weights, y,
                                   workspace, problem.lengths, per_step, streamed)
    return out, y, workspace


def reference_fp64(cell, problem: Problem, y, workspace):
    """reference.*_layer_backward in float64 on the same saved forward."""
    up = lambda t: t.double() if t is not None else None  # noqa: E731
    return cell.reference_backward([up(g) for g in problem.grads], up(problem.x),
                                   [up(s) for s in problem.states],
                                   [up(w) for w in problem.weights], up(y), up(workspace),
                                   problem.lengths)


def check_fp32(cell, case: Case, device):
    """fp32 under the same-dtype rule against torch.nn (autograd in fp64, PyTorch's own
    error from its fp32 autograd), and against the reference formulas in fp64 on the same
    saved forward (PyTorch's own error from the same formulas in fp32)."""
    problem, ours, y, workspace = check_low_precision(cell, case, torch.float32, device)
    up = lambda t: t.float() if t is not None else None  # noqa: E731
    baseline = cell.reference_backward([up(g) for g in problem.grads], up(problem.x),
                                       [up(s) for s in problem.states], [up(w) for w in problem.weights],
                                       y.float(), workspace.float(), problem.lengths)
    for name, got, base, want in zip(cell.grad_names, ours, baseline, reference_fp64(cell, problem, y, workspace)):
        assert_within_baseline(got, base, want, name=f"{name} vs reference",
                               reduction_length=reduction_length(cell, case))


def reduction_length(cell, case: Case) -> int:
    return recurrent_reduction_length(case.T, case.B, case.I, case.H, cell.gates)


def check_low_precision(cell, case: Case, dtype, device):
    """Every gradient within twice PyTorch's own same-dtype autograd error against float64
    torch.nn (plus the rounding floor); returns the problem, the kernel's gradients, and the
    saved forward (y, workspace) they came from."""
    problem = make_problem(cell, case, dtype, device)
    out, y, workspace = run_kernel(cell, problem, case.per_step, case.streamed)
    truth = autograd_gradients(cell, problem.module64, problem, torch.float64)
    module_low = cell.module(case.I, case.H, bias=case.bias, dtype=dtype, device=device)
    module_low.load_state_dict(problem.module64.state_dict())
    baseline = autograd_gradients(cell, module_low, problem, dtype)
    # Without bias torch.nn has no bias gradients: the zip stops before them.
    for name, got, base, want in zip(cell.grad_names, out, baseline, truth):
        assert got.dtype == dtype, name
        assert_within_baseline(got, base, want, name=f"{name} vs torch.nn",
                               reduction_length=reduction_length(cell, case))
    return problem, out, y, workspace


@pytest.mark.interpreter
@pytest.mark.parametrize("case", INTERPRETER_CASES, ids=str)
@pytest.mark.parametrize("cell", CELLS)
def test_fp32_matches_references(cell, case):
    check_fp32(cell, case, torch.device("cpu"))


@pytest.mark.interpreter
@pytest.mark.parametrize("case", FP16_INTERPRETER_CASES, ids=str)
@pytest.mark.parametrize("cell", CELLS)
def test_fp16_within_pytorch_error(cell, case):
    check_low_precision(cell, case, torch.float16, torch.device("cpu"))


@pytest.mark.interpreter
@pytest.mark.parametrize("case", [Case(T=7, B=3, I=5, H=20, lengths=(4, 1, 7)),
                                  Case(T=6, B=3, I=5, H=37, lengths=(4, 1, 5), streamed=True)], ids=str)
@pytest.mark.parametrize("cell", CELLS)
def test_exchange_copy_is_what_the_programs_read(cell, case, monkeypatch):
    """bf16 programs read each other's gate gradients from a separate 16-bit copy (the
    interpreter has no bf16): the same path with an fp32 copy must give the exact
    gradients, and the copy, poisoned with NaN before the kernel, must be written
    wherever it is read."""
    monkeypatch.setattr(backward, "exchanges_16_bit", lambda dtype: True)
    check_fp32(cell, case, torch.device("cpu"))


@pytest.mark.interpreter
@pytest.mark.parametrize("two_programs", [False, True], ids=["one-program", "two-programs-along-h"])
@pytest.mark.parametrize("cell", CELLS)
def test_scaled_exchange_is_exact(cell, two_programs, monkeypatch):
    """fp16's exchange (each producer scales its rows of the copy by a power of two and
    stores it, the consumer multiplies it back, then range-scales its chunk) run on fp32
    data with an fp32 copy: powers of two scale exactly, so the gradients must be the exact
    ones; the copy and the scales, poisoned with NaN before the kernel, must be written
    wherever read. With two programs along H (8 units each, one launch per step, K split
    over 4 warps) every consumer reads both producers' scales."""
    monkeypatch.setattr(backward, "exchanges_16_bit", lambda dtype: True)
    monkeypatch.setattr(backward, "exchange_scaled", lambda dtype: True)
    plain_meta = backward.kernel_meta
    monkeypatch.setattr(backward, "kernel_meta", lambda *args: dict(plain_meta(*args), RANGE_SCALE=True))
    case = Case(T=5, B=3, I=5, H=16 if two_programs else 37, lengths=(5, 1, 3))
    if two_programs:
        plan = common.LaunchPlan(16, 8, 64, 1, 2, False, False, 4, 16, 4)
        monkeypatch.setattr(backward, "_plan", lambda *args: plan)
    check_fp32(cell, case, torch.device("cpu"))


@pytest.mark.interpreter
@pytest.mark.parametrize("cell", CELLS)
def test_empty_batch(cell):
    """No rows: no launch (a grid must not be empty), empty gradients of the right shapes,
    zero weight gradients."""
    problem = make_problem(cell, Case(T=2, B=0, I=3, H=16), torch.float32, torch.device("cpu"))
    out, _, _ = run_kernel(cell, problem, per_step=False)
    shapes = [problem.x.shape] + [s.shape for s in problem.states] + [w.shape for w in problem.weights]
    for name, got, shape in zip(cell.grad_names, out, shapes):
        assert got.shape == shape, name
        assert torch.count_nonzero(got) == 0, name


# ---- CUDA: the compiled kernels, including the multi-program (grid barrier) path ----------

CUDA_CASES = INTERPRETER_CASES + [
    Case(T=9, B=16, I=32, H=128),                              # fp32: 2 programs, barrier
    Case(T=9, B=16, I=32, H=128, lengths=tuple(range(9, 1, -1)) * 2),
    Case(T=5, B=16, I=64, H=768),                              # fp32: streamed, 12 programs
    Case(T=24, B=5, I=24, H=96, lengths=(24, 1, 13, 7, 24)),   # fp32: 2 programs, barrier
]
CUDA_LOW_PRECISION_CASES = [
    Case(T=7, B=3, I=5, H=20, lengths=(4, 1, 7)),
    Case(T=7, B=3, I=5, H=20, per_step=True),
    Case(T=16, B=16, I=64, H=768),                             # 16-bit: persistent, 48 programs
    Case(T=16, B=16, I=64, H=768, lengths=tuple(range(16, 0, -1))),
    Case(T=16, B=16, I=64, H=768, per_step=True),
    Case(T=8, B=16, I=64, H=2048, lengths=tuple(range(8, 0, -1)) * 2),   # streamed, barrier
]


@pytest.mark.cuda
@pytest.mark.parametrize("case", CUDA_CASES, ids=str)
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_fp32_matches_references(cell, case):
    check_fp32(cell, case, torch.device("cuda"))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CUDA_LOW_PRECISION_CASES, ids=str)
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_low_precision_within_cudnn_error(cell, case, dtype):
    check_low_precision(cell, case, dtype, torch.device("cuda"))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_large_cases_use_the_barrier(cell, dtype):
    """The cases above meant for the barrier path really get a multi-program persistent plan."""
    H = 128 if dtype == torch.float32 else 768
    kind = common.LSTM if cell is LstmCell else common.GRU
    w_hh = torch.empty(common.GATES[kind] * H, H, dtype=dtype, device="cuda")
    plan = backward._plan(kind, w_hh, 16, H, False, False)
    assert plan.cooperative, plan   # persistent, more than one program along H
