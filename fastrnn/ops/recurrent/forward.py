"""Forward recurrence for the LSTM, GRU and Elman RNN Triton kernels (one kernel, the cell
is a constexpr).

The input projection x W_ih^T + b_ih of all steps is one GEMM before the kernel. The
kernel then runs the recurrence (see common.py for the persistent design): per step, each
program multiplies h_{t-1} by its slice of W_hh (resident on chip, or streamed from L2 in
K chunks for hidden sizes too large to keep), applies the cell's gate math in
fp32, writes its slice of h_t (the output, which is also how programs exchange h) and the
activations backward needs.

The slice is one MMA operand for all gates: column c of the product is gate c % SLOTS of
the program's unit c // SLOTS (SLOTS = 4 for the LSTM and GRU, whose fourth slot is
masked; 1 for the Elman cells, or 2 with the second masked when a program owns 8 units),
so the product's N is SLOTS x BLOCK_H >= 16 and an LSTM or GRU program may own just 4
units. split_gates takes the gates apart for the cell's math.

h_t travels through `hbuf` (T+1, B, H): hbuf[t] = y_t and hbuf[T] = h0, so the recurrent
operand of step t is hbuf[(t - 1) mod (T + 1)] whatever launched before it, and the
output y = hbuf[:T] starts at the buffer's start. The states a program carries
(h and c, fp32) are read from and written back to `h_state` / `c_state` at the ends of a
launch, so one launch over all steps and one launch per step run the same code.
"""
import torch
import triton
import triton.language as tl
from triton.runtime.jit import MockTensor

from fastrnn import errors
from fastrnn.ops.recurrent import common
from fastrnn.ops.recurrent.common import GATES, GRU, LSTM, RNN_RELU, WORKSPACE_WIDTH, tanh


@triton.jit
def gate_columns(pid_h, H, G: tl.constexpr, SLOTS: tl.constexpr, BLOCK_H: tl.constexpr):
    """For each column of this program's product: its row of W_hh (and b_hh), and whether
    it exists (a gate the cell has, a unit below H)."""
    cols = tl.arange(0, SLOTS * BLOCK_H)
    gate = cols % SLOTS
    unit = pid_h * BLOCK_H + cols // SLOTS
    return gate * H + unit, (gate < G) & (unit < H)


@triton.jit
def load_weight_tile(w_ptr, w_rows, col_ok, ks, H, k_ok):
    """(BLOCK_K, SLOTS*BLOCK_H) tile of W_hh^T: tile[k, c] = W_hh[w_rows[c], k]."""
    return tl.load(w_ptr + w_rows.to(tl.int64)[None, :] * H + ks[:, None],
                   mask=col_ok[None, :] & k_ok[:, None], other=0.0)


@triton.jit
def split_gates(product, SLOTS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """The four (BLOCK_B, BLOCK_H) gate blocks of a (BLOCK_B, SLOTS*BLOCK_H) product whose
    column j*SLOTS + gate belongs to unit j (gates past the cell's are zero; with one slot
    every block is the product itself)."""
    if SLOTS == 1:
        return product, product, product, product
    elif SLOTS == 2:
        g0, g1 = tl.split(tl.reshape(product, (BLOCK_B, BLOCK_H, 2)))
        return g0, g1, g1, g1
    else:
        # Column j*4 + 2*a + b holds gate 2*a + b: split b, then a.
        even, odd = tl.split(tl.reshape(product, (BLOCK_B, BLOCK_H, 2, 2)))
        g0, g2 = tl.split(even)
        g1, g3 = tl.split(odd)
        return g0, g1, g2, g3


@triton.jit
def load_gate_input(xproj_ptr, gate, base, units, H, mask):
    """(BLOCK_B, BLOCK_H) slice of the input projection for one gate, in fp32."""
    return tl.load(xproj_ptr + base + gate * H + units[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def streamed_product(h_rows_ptr, w_ptr, w_rows, col_ok, row_ok, H, DOT_PRECISION: tl.constexpr,
                     BLOCK_B: tl.constexpr, TILE_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """h_prev times this program's W_hh^T columns, reading W_hh in K chunks from L2 (for
    hidden sizes whose slices do not fit on chip). h_rows_ptr points at the (BLOCK_B, H)
    rows of h_prev. The chunk loop may be software-pipelined: it runs after the step's
    barrier, so every h it prefetches is already final."""
    acc = tl.zeros((BLOCK_B, TILE_N), dtype=tl.float32)
    for k0 in tl.range(0, H, BLOCK_K, num_stages=2):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < H
        h = tl.load(h_rows_ptr + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0,
                    cache_modifier=".cg")
        w = load_weight_tile(w_ptr, w_rows, col_ok, ks, H, k_ok)
        acc += tl.dot(common.dot_operand(h, w.dtype, DOT_PRECISION), w, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def load_x_gates(xproj_ptr, x_base, units, H, mask, G: tl.constexpr):
    """The input projection of one step for the cell's gates, (BLOCK_B, BLOCK_H) fp32 each
    (gates the cell lacks repeat gate 0 and are never used)."""
    x0 = load_gate_input(xproj_ptr, 0, x_base, units, H, mask)
    x1 = x0
    x2 = x0
    x3 = x0
    if G > 1:
        x1 = load_gate_input(xproj_ptr, 1, x_base, units, H, mask)
        x2 = load_gate_input(xproj_ptr, 2, x_base, units, H, mask)
    if G > 3:
        x3 = load_gate_input(xproj_ptr, 3, x_base, units, H, mask)
    return x0, x1, x2, x3


@triton.jit
def cell_step(CELL: tl.constexpr, x0, x1, x2, x3, ws_base, H, tile_ok, hg0, hg1, hg2, hg3, h_state,
              c_state):
    """The cell's gate math for one step in fp32 from the input projection (x0..x3) and
    the recurrent product (hg0..hg3) of each gate; stores the activations backward needs
    into the workspace and returns (h_new, c_new) (c_new = c_state for cells without c)."""
    if CELL == 0:  # LSTM: i, f, g, o; workspace i, f, g, o, c
        i = tl.sigmoid(x0 + hg0)
        f = tl.sigmoid(x1 + hg1)
        g = tanh(x2 + hg2)
        o = tl.sigmoid(x3 + hg3)
        c_new = f * c_state + i * g
        h_new = o * tanh(c_new)
        tl.store(ws_base, i, mask=tile_ok)
        tl.store(ws_base + H, f, mask=tile_ok)
        tl.store(ws_base + 2 * H, g, mask=tile_ok)
        tl.store(ws_base + 3 * H, o, mask=tile_ok)
        tl.store(ws_base + 4 * H, c_new, mask=tile_ok)
    elif CELL == 1:  # GRU: r, z, n with b_hn inside r * (W_hn h + b_hn); workspace r, z, n, hn
        r = tl.sigmoid(x0 + hg0)
        z = tl.sigmoid(x1 + hg1)
        n = tanh(x2 + r * hg2)
        h_new = (1.0 - z) * n + z * h_state
        c_new = c_state
        tl.store(ws_base, r, mask=tile_ok)
        tl.store(ws_base + H, z, mask=tile_ok)
        tl.store(ws_base + 2 * H, n, mask=tile_ok)
        tl.store(ws_base + 3 * H, hg2, mask=tile_ok)
    else:  # Elman RNN, tanh (2) or relu (3); workspace h
        pre = x0 + hg0
        if CELL == 3:
            h_new = tl.maximum(pre, 0.0)
        else:
            h_new = tanh(pre)
        c_new = c_state
        tl.store(ws_base, h_new, mask=tile_ok)
    return h_new, c_new


# T, B and the step range change from call to call: specialising on them (== 1,
# multiples of 16) would compile a new variant for each.
@triton.jit(do_not_specialize=["T", "B", "t_begin", "t_end"])
def recurrent_forward_kernel(
        xproj_ptr, w_hh_ptr, b_hh_ptr, lengths_ptr, hbuf_ptr, h_state_ptr, c_state_ptr, ws_ptr,
        counter_ptr, error_ptr, T, B, H, t_begin, t_end,
        CELL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LENGTHS: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
        SPLIT: tl.constexpr, K_CHUNKS: tl.constexpr, RESIDENT: tl.constexpr, GRID_BARRIER: tl.constexpr, DOT_PRECISION: tl.constexpr,
        MAX_POLLS: tl.constexpr, ABORT: tl.constexpr, PREFETCH_X: tl.constexpr):
    G: tl.constexpr = 4 if CELL == 0 else (3 if CELL == 1 else 1)
    SLOTS: tl.constexpr = 4 if G > 1 else (2 if BLOCK_H < 16 else 1)
    TILE_N: tl.constexpr = SLOTS * BLOCK_H
    W: tl.constexpr = 5 if CELL == 0 else (4 if CELL == 1 else 1)
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    units = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < B
    unit_ok = units < H
    tile_ok = row_ok[:, None] & unit_ok[None, :]
    rows64 = rows.to(tl.int64)
    w_rows, col_ok = gate_columns(pid_h, H, G, SLOTS, BLOCK_H)

    if RESIDENT:
        # This program's slice of W_hh (as W_hh^T: K = H down, its gate rows across) stays
        # in registers for every step of the launch.
        w0, w1, w2, w3 = common.load_resident_weights(w_hh_ptr, w_rows.to(tl.int64) * H, col_ok, H, 1,
                                                      K_CHUNKS, SPLIT, BLOCK_K)
    if HAS_BIAS:
        bias = tl.load(b_hh_ptr + w_rows, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    else:
        bias = tl.zeros((1, TILE_N), dtype=tl.float32)

    state_offsets = rows64[:, None] * H + units[None, :]
    h_state = tl.load(h_state_ptr + state_offsets, mask=tile_ok, other=0.0)
    c_state = h_state
    if CELL == 0:
        c_state = tl.load(c_state_ptr + state_offsets, mask=tile_ok, other=0.0)
    t_stop = t_end
    if HAS_LENGTHS:
        length = tl.load(lengths_ptr + rows, mask=row_ok, other=0)
        # Past the longest sequence of this batch block there is nothing to compute: its
        # outputs stay zero (the launcher zeroes them) and its states stay as they are.
        # Every program of the block stops at the same step, so the barrier counts agree.
        t_stop = tl.minimum(t_end, tl.max(length, axis=0).to(tl.int32))

    # With PREFETCH_X (common.CARRY_NEXT_INPUT) the input projection of the first step is
    # loaded here (t_begin < T, so in bounds even when there is nothing to compute) and each
    # later one before the wait for the step before it, so its latency hides behind the
    # barrier. Otherwise, and for the Elman cells, each step loads its own first thing,
    # beside h's loads.
    PREFETCH: tl.constexpr = PREFETCH_X and G > 1
    t = t_begin
    ok = t_begin < t_stop
    if PREFETCH:
        x0, x1, x2, x3 = load_x_gates(xproj_ptr, (t * B + rows64[:, None]) * (G * H), units, H, tile_ok, G)
    # A while loop: the pipeliner leaves it alone, so nothing of step t+1 is loaded
    # before step t's stores (see common.py). `ok` turns False when the launch aborts.
    while ok:
        # t * B stays far below 2^31; the products with H are formed in int64 via rows64.
        if not PREFETCH:
            x0, x1, x2, x3 = load_x_gates(xproj_ptr, (t * B + rows64[:, None]) * (G * H), units, H, tile_ok,
                                          G)
        prev = (t + T) % (T + 1)
        h_rows = hbuf_ptr + (prev * B + rows64[:, None]) * H
        if RESIDENT:
            product = common.resident_product(h_rows, row_ok, H, w0, w1, w2, w3, K_CHUNKS, SPLIT, BLOCK_K,
                                              BLOCK_B, TILE_N, DOT_PRECISION, False)
        else:
            product = streamed_product(h_rows, w_hh_ptr, w_rows, col_ok, row_ok, H, DOT_PRECISION,
                                       BLOCK_B, TILE_N, BLOCK_K)
        hg0, hg1, hg2, hg3 = split_gates(product + bias, SLOTS, BLOCK_B, BLOCK_H)
        ws_base = ws_ptr + (t * B + rows64[:, None]) * (W * H) + units[None, :]
        h_new, c_new = cell_step(CELL, x0, x1, x2, x3, ws_base, H, tile_ok, hg0, hg1, hg2, hg3, h_state,
                                 c_state)
        if HAS_LENGTHS:
            active = (length > t)[:, None]
            h_state = tl.where(active, h_new, h_state)
            c_state = tl.where(active, c_new, c_state)
            h_new = tl.where(active, h_new, 0.0)
        else:
            h_state = h_new
            c_state = c_new
        out_offsets = (t * B + rows64[:, None]) * H + units[None, :]
        tl.store(hbuf_ptr + out_offsets, h_new.to(hbuf_ptr.dtype.element_ty), mask=tile_ok)
        t += 1
        ok = t < t_stop
        if ok:
            if PREFETCH:
                next0, next1, next2, next3 = load_x_gates(xproj_ptr, (t * B + rows64[:, None]) * (G * H),
                                                          units, H, tile_ok, G)
                # Only the cell's gates are carried to the next step (Triton 3.6 fails to
                # compile a loop that carries one value in several variables).
                x0 = next0
                x1 = next1
                x2 = next2
                if G > 3:
                    x3 = next3
            # Every program of this batch block has written its slice of h_t.
            ok = common.step_barrier(counter_ptr + pid_b, t - t_begin, error_ptr, GRID_BARRIER,
                                     MAX_POLLS, ABORT)

    tl.store(h_state_ptr + state_offsets, h_state, mask=tile_ok)
    if CELL == 0:
        tl.store(c_state_ptr + state_offsets, c_state, mask=tile_ok)


def kernel_meta(cell: int, plan: common.LaunchPlan, dtype: torch.dtype, has_bias: bool,
                has_lengths: bool) -> dict:
    """Constexprs and launch options of the forward kernel for `plan` (also what the
    static GPU check compiles)."""
    return dict(CELL=cell, HAS_BIAS=has_bias, HAS_LENGTHS=has_lengths, BLOCK_B=plan.block_b,
                BLOCK_H=plan.block_h, BLOCK_K=plan.block_k, SPLIT=plan.split, K_CHUNKS=plan.k_chunks,
                RESIDENT=plan.resident, DOT_PRECISION=common.dot_precision(dtype),
                PREFETCH_X=common.CARRY_NEXT_INPUT, **common.launch_options(plan))


def product(cell: int, dtype: torch.dtype) -> common.Product:
    """The forward's recurrent product: every gate of a program's units in one MMA."""
    return common.Product(GATES[cell], stacked=True,
                          fma=common.dot_precision(dtype) == "ieee" and dtype == torch.float32)


def mock_args(dtype: torch.dtype, T: int, B: int, H: int, has_lengths: bool = True) -> list:
    """The kernel's arguments as Triton sees them for specialisation, as run_forward
    launches it: tensors by dtype, 16-byte aligned (common.aligned), integers by value.
    Without lengths the lengths pointer is the int32 barrier counter (never read)."""
    pointer_dtypes = [dtype, dtype, dtype, torch.int64 if has_lengths else torch.int32, dtype,
                      torch.float32, torch.float32, torch.float32, torch.int32, torch.int32]
    return [MockTensor(d) for d in pointer_dtypes] + [T, B, H, 0, T]


def _plan(cell, x, H, has_bias, has_lengths, force_per_step, force_streamed) -> common.LaunchPlan:
    key = (cell, x.dtype, has_bias, has_lengths, common.dot_precision(x.dtype))
    return common.launch_plan(
        "forward", x.device, x.shape[1], H, product(cell, x.dtype), key, recurrent_forward_kernel,
        lambda: mock_args(x.dtype, 64, x.shape[1], H, has_lengths),
        lambda plan: kernel_meta(cell, plan, x.dtype, has_bias, has_lengths), force_per_step,
        force_streamed)


def run_forward(cell: int, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, force_per_step=False,
                force_streamed=False):
    """The recurrence for `cell` (LSTM, GRU, RNN_TANH, RNN_RELU). Returns y (T, B, H), h_T,
    c_T (None but for the LSTM) and the workspace (T, B, W*H) fp32.

    Never synchronises with the host: a barrier timeout is reported through
    fastrnn.errors (a RuntimeError at the next fastrnn call or fastrnn.check_errors()).
    Plans and launches on x's device (Triton launches on the current one)."""
    with torch.cuda.device_of(x):
        return _run_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, force_per_step,
                            force_streamed)


def _run_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, force_per_step, force_streamed):
    T, B = x.shape[0], x.shape[1]
    G = GATES[cell]
    H = w_hh.shape[0] // G
    xproj = torch.nn.functional.linear(x, w_ih, b_ih).contiguous()
    # With lengths, kernels skip the steps past a batch block's longest sequence, whose
    # outputs must read zero.
    hbuf = x.new_zeros(T + 1, B, H) if lengths is not None else x.new_empty(T + 1, B, H)
    hbuf[T] = h0
    h_state = h0.to(torch.float32).contiguous().clone()
    c_state = c0.to(torch.float32).contiguous().clone() if cell == LSTM else h_state
    workspace = x.new_empty(T, B, WORKSPACE_WIDTH[cell] * H, dtype=torch.float32)
    if B > 0 and T > 0:
        plan = _plan(cell, x, H, b_hh is not None, lengths is not None, force_per_step, force_streamed)
        meta = kernel_meta(cell, plan, x.dtype, b_hh is not None, lengths is not None)
        error = torch.zeros(1, dtype=torch.int32, device=x.device)
        # Inputs contiguous and aligned as the planner assumed (mock_args).
        w_hh = common.recurrent_weights(w_hh)
        b_hh = common.aligned(b_hh) if b_hh is not None else w_hh
        lengths = common.aligned(lengths) if lengths is not None else None
        for t_begin, t_end, counter in _launch_ranges(T, plan, x.device):
            recurrent_forward_kernel[plan.grid](
                xproj, w_hh, b_hh, lengths if lengths is not None else counter, hbuf, h_state,
                c_state, workspace, counter, error, T, B, H, t_begin, t_end, **meta)
        if plan.cooperative and T > 1:   # one step waits at no barrier (a decode step)
            errors.report(error, common.barrier_error_message("forward", plan))
    y = hbuf[:T]
    h_t = h_state.to(x.dtype)
    c_t = c_state.to(x.dtype) if cell == LSTM else None
    return y, h_t, c_t, workspace


def _launch_ranges(T: int, plan: common.LaunchPlan, device):
    """(t_begin, t_end, barrier counters) per launch: every step in one launch when
    persistent (split only where the int32 arrival count would grow too large), else one
    launch per step. Each launch gets zeroed counters (one per batch block)."""
    if plan.persistent:
        steps = max(1, common.MAX_BARRIER_ARRIVALS // plan.programs_h)
        bounds = [(t, min(t + steps, T)) for t in range(0, T, steps)]
    else:
        bounds = [(t, t + 1) for t in range(T)]
    counters = common.barrier_counters(len(bounds), plan, device)
    return [(lo, hi, counter) for (lo, hi), counter in zip(bounds, counters)]
