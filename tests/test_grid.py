"""The GPU's own launch plans, every program of them, run on the CPU.

On a GPU the recurrent kernels split the hidden size over many programs that exchange h_t
(forward) or the gate gradients (BPTT) through global memory and meet at a grid barrier
every step. The stock interpreter runs programs one after another, so the other tests run a
single program along the hidden size. Here every program runs in its own thread
(tests/concurrent_interpreter.py), with the exact plans the sm_90 planner chooses, read
from the static check's committed table (benchmarks/results/gpu_static_sm90.json, whose
recorded source hash `make gpu-static` checks against the kernels): block sizes, programs along B and H,
resident / streamed / per-step, the split of K over warps, lengths.

Each layer is compared with torch.nn in float64, output and every gradient (fp32 data at
the fp32 rule; the headline plan also in fp16 at the low-precision rule). On a GPU the
same tests run the compiled kernels with these plans.
"""
import dataclasses
import functools
import json
import time
from pathlib import Path

import pytest
import torch
import triton

from benchmarks import gpu_static
from fastrnn import backends, functional
from fastrnn.ops.gru import reference as gru_reference
from fastrnn.ops.lstm import reference as lstm_reference
from fastrnn.ops.recurrent import backward, common, forward
from fastrnn.ops.rnn import reference as rnn_reference

from .concurrent_interpreter import concurrent_programs
from .conftest import HAS_CUDA, INTERPRETER
from .ops.layer_cases import GRU, LSTM, RNN_TANH, assert_lengths_match_reference, check_parity

pytestmark = [pytest.mark.grid, pytest.mark.skipif(
    not (HAS_CUDA or (INTERPRETER and backends.triton_importable())),
    reason="needs a CUDA GPU, or TRITON_INTERPRET=1 with triton installed")]

TABLE = Path(__file__).parent.parent / "benchmarks" / "results" / "gpu_static_sm90.json"
CELLS = {"lstm": LSTM, "gru": GRU, "rnn_tanh": RNN_TANH}
CELL_IDS = {"lstm": common.LSTM, "gru": common.GRU, "rnn_tanh": common.RNN_TANH}
MODES = ("persistent", "streamed", "per-step")
T = 3
# Plans of larger batches are in the static table but not run here: at B = 257 the
# reductions over T·B rows (d_bias, d_W) reach past the fp32 tolerance (an open finding:
# docs/precision.md), and they cost the interpreter most.
MAX_BATCH = 64


@functools.lru_cache(maxsize=None)
def table_rows():
    """The recurrent rows of the sm_90 table that CI's static check recompiles (its headline
    grid and fixed sample), so the plans these tests run do not change when the committed
    table is the full grid rather than that sample."""
    return [r for r in json.loads(TABLE.read_text())["rows"] if r["kernel"] == "recurrent"
            and r["B"] <= MAX_BATCH and gpu_static.in_ci_sample(gpu_static.Problem(
                r["cell"], r["direction"], r["dtype"], r["B"], r["H"], r["lengths"],
                r["forced_mode"], r["precision"]))]


def planned_rows():
    """The rows the planner chose itself (no forced mode)."""
    return [r for r in table_rows() if not r["forced_mode"]]


def plan_of(row) -> common.LaunchPlan:
    """The LaunchPlan a table row records."""
    plan = common.LaunchPlan(
        row["block_b"], row["block_h"], row["block_k"], triton.cdiv(row["B"], row["block_b"]),
        triton.cdiv(row["H"], row["block_h"]), resident=row["mode"] == "persistent",
        persistent=row["mode"] != "per-step", num_warps=row["num_warps"], tile_n=row["tile_n"],
        split=row["split_k"], k_chunks=row.get("k_chunks", 1), reason="sm_90 table")
    assert plan.programs == row["programs"], row
    return plan


def find_row(cell, direction, dtype, precision, B, H, lengths):
    matches = [r for r in planned_rows() if (r["cell"], r["direction"], r["dtype"], r["precision"],
                                             r["B"], r["H"], r["lengths"])
               == (cell, direction, dtype, precision, B, H, lengths)]
    assert len(matches) == 1, (cell, direction, dtype, precision, B, H, lengths, len(matches))
    return matches[0]


def interpreter_cost(row) -> int:
    """Chunks of the recurrent product the interpreter runs for a row's plan over T steps
    (its time grows with them: every program is interpreted on the CPU)."""
    gates = common.GATES[CELL_IDS[row["cell"]]] if row["direction"] == "backward" else 1
    return row["programs"] * triton.cdiv(gates * row["H"], row["block_k"]) * T


def partner_key(row):
    direction = "backward" if row["direction"] == "forward" else "forward"
    return (row["cell"], direction, row["dtype"], row["precision"], row["B"], row["H"],
            direction == "backward" or row["lengths"])


def partner(row):
    """The plan of the other direction that the planner chooses at the same shape."""
    return find_row(*partner_key(row))


def has_partner(row) -> bool:
    key = partner_key(row)
    return any((r["cell"], r["direction"], r["dtype"], r["precision"], r["B"], r["H"], r["lengths"]) == key
               for r in planned_rows())


def cheapest_split_row(cell, direction, mode, lengths):
    """Among the planner's `mode` plans of `cell` that split the hidden size over programs,
    the one whose run (with its partner plan) costs the interpreter least; where the
    planner never chooses `mode` in the table, the plan it makes when that mode is forced
    (the per-step fallback it would take for a shape whose persistent plans do not fit)."""
    def split(rows):
        return [r for r in rows if r["cell"] == cell and r["direction"] == direction
                and r["mode"] == mode and triton.cdiv(r["H"], r["block_h"]) > 1]
    # The table may hold one direction of a shape only: runs need both.
    rows = [r for r in split(planned_rows()) if (direction == "backward" or r["lengths"] == lengths)
            and has_partner(r)]
    rows = rows or [r for r in split(r for r in table_rows() if r["forced_mode"]) if has_partner(r)]
    if not rows:
        pytest.skip(f"the sm_90 table has no split {mode} {direction} plan of {cell}, "
                    "chosen or forced")
    return min(rows, key=lambda r: interpreter_cost(r) + interpreter_cost(partner(r)))


def run_with_plans(monkeypatch, cell, B, H, forward_row, backward_row, dtype=torch.float32,
                   lengths=None, I=5):
    """Forward and BPTT of `cell` with the two rows' plans, every program a thread, against
    torch.nn in float64 (outputs and every gradient)."""
    plans = {"forward": plan_of(forward_row), "backward": plan_of(backward_row)}
    monkeypatch.setattr(forward, "_plan", lambda *args, **kwargs: plans["forward"])
    monkeypatch.setattr(backward, "_plan", lambda *args, **kwargs: plans["backward"])
    device = "cuda" if HAS_CUDA else "cpu"
    with concurrent_programs():
        if lengths is None:
            check_parity(CELLS[cell], T, B, I, H, device, dtype=dtype)
        else:
            check_lengths(cell, B, I, H, device, lengths)


# (functional layer, reference layer, kind for torch's oracles, gates, states) per cell
LAYERS = {
    "lstm": (functional.lstm_layer, lstm_reference.lstm_layer, "LSTM", 4, 2),
    "gru": (functional.gru_layer, gru_reference.gru_layer, "GRU", 3, 1),
    "rnn_tanh": (functools.partial(functional.rnn_layer, nonlinearity="tanh"),
                 functools.partial(rnn_reference.rnn_layer, nonlinearity="tanh"), "RNN", 1, 1),
}


def check_lengths(cell, B, I, H, device, lengths):
    """With per-sequence lengths: against fastrnn's reference and torch's layer on a
    PackedSequence and its cell stepped per sequence, all in float64."""
    layer, reference, kind, gates, n_states = LAYERS[cell]
    scale = H ** -0.5
    args = [torch.randn(T, B, I, device=device)] + [torch.randn(B, H, device=device) for _ in range(n_states)]
    args += [scale * torch.randn(gates * H, I, device=device), scale * torch.randn(gates * H, H, device=device),
             scale * torch.randn(gates * H, device=device), scale * torch.randn(gates * H, device=device)]
    outputs = ["y", "h_T", "c_T"][:1 + n_states]
    assert_lengths_match_reference(functools.partial(layer, backend="triton"), reference,
                                   [a.requires_grad_() for a in args], lengths.to(device), outputs,
                                   kind=kind)


def lengths_for(B):
    """Lengths from T down to 1, the longest first and last (so batch blocks differ)."""
    return torch.tensor([T if b % 3 == 0 else 1 + b % T for b in range(B)], dtype=torch.int64)


# ------------------------------------------------------------------ every mode of every cell


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cell", list(CELLS))
def test_forward_plan(monkeypatch, cell, mode):
    """The cheapest split plan of `mode` the planner chooses for the forward, with the BPTT
    plan it chooses at the same shape; no lengths."""
    row = cheapest_split_row(cell, "forward", mode, lengths=False)
    run_with_plans(monkeypatch, cell, row["B"], row["H"], row, partner(row),
                   lengths=lengths_for(row["B"]) if row["lengths"] else None)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cell", list(CELLS))
def test_bptt_plan(monkeypatch, cell, mode):
    """The cheapest split plan of `mode` the planner chooses for BPTT, with the forward plan
    it chooses at the same shape; per-sequence lengths."""
    row = cheapest_split_row(cell, "backward", mode, lengths=True)
    run_with_plans(monkeypatch, cell, row["B"], row["H"], partner(row), row, lengths=lengths_for(row["B"]))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_forward_that_loads_each_input_in_its_step(monkeypatch, cell):
    """The forward as it compiles under Triton 3.6 (common.CARRY_NEXT_INPUT False: no input
    projection carried across the barrier), with the planner's split persistent plan."""
    monkeypatch.setattr(common, "CARRY_NEXT_INPUT", False)
    row = cheapest_split_row(cell, "forward", "persistent", lengths=False)
    run_with_plans(monkeypatch, cell, row["B"], row["H"], row, partner(row))


# ------------------------------------------------------------------ the headline plans


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_headline_plan(monkeypatch, dtype):
    """LSTM B=16, H=768 with its fp16 plans: every program of the forward and of BPTT."""
    fwd = find_row("lstm", "forward", "fp16", "ieee", 16, 768, False)
    back = find_row("lstm", "backward", "fp16", "ieee", 16, 768, True)
    assert plan_of(fwd).programs_h > 1 and plan_of(back).programs_h > 1
    run_with_plans(monkeypatch, "lstm", 16, 768, fwd, back, dtype=dtype)


def test_headline_plan_with_lengths(monkeypatch):
    fwd = find_row("lstm", "forward", "fp16", "ieee", 16, 768, True)
    back = find_row("lstm", "backward", "fp16", "ieee", 16, 768, True)
    run_with_plans(monkeypatch, "lstm", 16, 768, fwd, back, lengths=lengths_for(16))


def test_batch_64_hidden_1024_plan(monkeypatch):
    fwd = find_row("lstm", "forward", "fp16", "ieee", 64, 1024, False)
    back = find_row("lstm", "backward", "fp16", "ieee", 64, 1024, True)
    run_with_plans(monkeypatch, "lstm", 64, 1024, fwd, back)


# ------------------------------------------------------------------ a program that never arrives


def _lstm_inputs(B, I, H, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype) * H ** -0.5
    return (rand(T, B, I), rand(B, H), rand(B, H), rand(4 * H, I), rand(4 * H, H), rand(4 * H),
            rand(4 * H))


@pytest.mark.interpreter
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_program_that_never_arrives(monkeypatch, direction):
    """The headline plan with one program missing (as when a GPU cannot make every program
    resident): every other program gives up at the barrier and leaves, and the call raises
    the RuntimeError that names the cause and the way out."""
    monkeypatch.setattr(common, "MAX_BARRIER_POLLS", 200)
    row = find_row("lstm", direction, "fp16", "ieee", 16, 768, direction == "backward")
    plan = plan_of(row)
    assert plan.cooperative
    monkeypatch.setattr(forward if direction == "forward" else backward, "_plan",
                        lambda *args, **kwargs: plan)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _lstm_inputs(16, 5, 768)
    missing = (0, plan.programs_h // 2, 0)
    start = time.monotonic()
    if direction == "forward":
        with concurrent_programs(absent=[missing]), \
                pytest.raises(RuntimeError, match="grid barrier of the Triton forward kernel timed out"):
            forward.run_forward(common.LSTM, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None)
    else:
        y, _, _, workspace = forward.run_forward(common.LSTM, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None)
        with concurrent_programs(absent=[missing]), \
                pytest.raises(RuntimeError, match="grid barrier of the Triton BPTT kernel timed out"):
            backward.lstm_backward(torch.ones_like(y), torch.zeros_like(h0), torch.zeros_like(c0), x,
                                   h0, c0, w_ih, w_hh, y, workspace, None)
    # concurrent_programs raises if any thread is still running when the launch returns.
    assert time.monotonic() - start < 300


# ------------------------------------------------------------------ two streams at once


@pytest.mark.cuda
def test_two_streams_at_once():
    """Two headline-sized forward calls on two streams at the same time give what
    each gives alone: cooperative launches beside each other may wait, never deadlock or
    mix their barrier counters."""
    torch.manual_seed(5)
    modules = [torch.nn.LSTM(64, 768).cuda().half() for _ in range(2)]
    from fastrnn import LSTM as FastLSTM
    fast = []
    for m in modules:
        f = FastLSTM(64, 768).cuda().half()
        f.load_state_dict(m.state_dict())
        fast.append(f)
    xs = [torch.randn(64, 16, 64, device="cuda", dtype=torch.float16) for _ in range(2)]
    alone = [f(x)[0].float() for f, x in zip(fast, xs)]
    torch.cuda.synchronize()
    streams = [torch.cuda.Stream() for _ in range(2)]
    together = [None, None]
    for i, (f, x, s) in enumerate(zip(fast, xs, streams)):
        with torch.cuda.stream(s):
            together[i] = f(x)[0].float()
    torch.cuda.synchronize()
    for a, b in zip(alone, together):
        assert torch.equal(a, b)
