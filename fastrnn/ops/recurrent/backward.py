"""Backward through time (BPTT) for the LSTM, GRU and Elman RNN Triton backends: one
kernel, the cell a constexpr.

The reverse-time recurrence runs in one Triton kernel; what does not recur (dx, dW_ih,
dW_hh, the bias gradients) is computed afterwards as large GEMMs over all steps at once.
The math is exactly that of the references' lstm_layer_backward / gru_layer_backward /
rnn_layer_backward.

Kernel structure (see common.py): program (pid_b, pid_h) owns BLOCK_B batch rows and
BLOCK_H hidden units and keeps W_hh[:, its units] (all G*H gate rows, as G tiles of
(BLOCK_K, TILE_N)) in registers or streams it from L2. TILE_N is BLOCK_H, or 16 when a
program owns 8 units (tl.dot's minimum: the extra columns are masked to zero and dropped
from the product). A tile that small gives one warp all the MMA work, so streamed plans
of small tiles split each K chunk over SPLIT warps (a batched tl.dot, whose warps Triton
places along the batch dimension) and sum the partial products at the end of the step.
Step t of the recurrence is split in two halves so that programs only need each other's
results between them:

  process t: dh = dh_state + grad_y[t]; the cell's pointwise backward from the saved
             activations; write this program's slice of the gate gradients of step t.
  finish t:  dh_state = where(active_t, dgates_hidden[t] @ W_hh[:, slice] + dh_local,
             dh_state) -- this reads every program's gate gradients of step t.

Iteration t of the launch loop finishes t+1 (after a grid barrier when the hidden size is
split across programs) and then processes t; the last iteration, t = -1, only finishes
step 0, leaving dh0 in dh_state. Persistent mode runs t = T-1 .. -1 in one launch; the
per-step fallback launches each t separately, the launch boundary acting as the barrier.
Both modes run the same code: the carried state (dh_state, dc_state for the LSTM,
dh_local = dh * z for the GRU) is loaded from global buffers at launch start and stored
back at launch end.

Precision of the recurrent product: fp32 inputs follow torch.backends.cudnn.allow_tf32
(common.dot_precision); 16-bit inputs multiply the gate gradients in the weights' type.
The programs exchange the gate gradients as a 16-bit copy (half the bytes each program
reads per step; the fp32 ones feed the weight-gradient GEMMs). fp16 tops out at 65504,
and gradients scaled for mixed precision (GradScaler's 2^16) pass that where the fp32
values are finite, so for fp16 (RANGE_SCALE) each producer scales its row of gate
gradients (its units, all gates) by a power of two before the cast and stores the power
beside them (_exchange_scale); the consumer brings each row of its K chunk to the largest
of its producers' powers (a factor <= 1, _rescale), multiplies in fp16 and scales the
product back. Powers of two scale exactly, so a value that fp16 holds at both scales
passes unchanged.
"""
import torch
import triton
import triton.language as tl
from triton.runtime.jit import MockTensor

from fastrnn import errors
from fastrnn.ops.recurrent import common


@triton.jit
def _load_gate_tile(w_hh_ptr, gate, H, offs_k, offs_n, col_ok):
    """(BLOCK_K, TILE_N) tile of one gate's rows of W_hh: tile[k, j] = W_hh[gate*H + k, j]."""
    rows = (gate * H + offs_k).to(tl.int64)
    return tl.load(w_hh_ptr + rows[:, None] * H + offs_n[None, :],
                   mask=(offs_k < H)[:, None] & col_ok[None, :], other=0.0)


@triton.jit
def _own_units(product, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, TILE_N: tl.constexpr):
    """The program's BLOCK_H columns of a (BLOCK_B, TILE_N) product whose columns past
    BLOCK_H are zero (a padded tile): the padding is summed in, exactly."""
    if TILE_N == BLOCK_H:
        return product
    else:
        return tl.sum(tl.reshape(product, (BLOCK_B, TILE_N // BLOCK_H, BLOCK_H)), axis=1)


@triton.jit
def _rescale(dg, scale, top):
    """The exchanged values dg (each scaled by its producer's power of two `scale`) on the
    common scale `top` of their row of the chunk, the largest of those powers (at least
    2^-100, range_shift's least, so rows with no valid entry stay finite). scale / top is a
    power of two <= 1: values stay <= 2^15 and pass exactly unless they fall below fp16's
    normal range at that scale."""
    return dg.to(tl.float32) * (scale * (1.0 / tl.maximum(top, 7.888609052210118e-31)))   # 2^-100


@triton.jit
def _gate_product(dg_row, scale_row, gate, H, offs_k, mask_k, w, DOT_PRECISION: tl.constexpr,
                  RANGE_SCALE: tl.constexpr, BLOCK_H: tl.constexpr):
    """One gate's share of the recurrent product: dgates[t, rows, gate*H + k] @ tile. With
    RANGE_SCALE (fp16) each value carries its producer's power of two, per row at
    scale_row[k // BLOCK_H]: the product runs on their common scale and is scaled back."""
    # .cg: read through L2, where the other programs' stores are visible.
    dg = tl.load(dg_row + gate * H + offs_k[None, :], mask=mask_k, other=0.0, cache_modifier=".cg")
    if RANGE_SCALE:
        scale = tl.load(scale_row + offs_k[None, :] // BLOCK_H, mask=mask_k, other=0.0, cache_modifier=".cg")
        top = tl.max(scale, axis=1)[:, None]
        scaled = _rescale(dg, scale, top).to(w.dtype)
        return tl.dot(scaled, w, input_precision=DOT_PRECISION) * top
    else:
        return tl.dot(common.dot_operand(dg, w.dtype, DOT_PRECISION), w, input_precision=DOT_PRECISION)


@triton.jit
def _split_gate_product(dg_row, scale_row, w_hh_ptr, gate, H, k0, mask_b, offs_n, col_ok,
                        DOT_PRECISION: tl.constexpr, RANGE_SCALE: tl.constexpr,
                        SPLIT: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr):
    """One gate's share of the product over the K chunk [k0, k0 + BLOCK_K), as SPLIT
    slices of BLOCK_K / SPLIT, one per warp: (SPLIT, BLOCK_B, TILE_N) partial products."""
    KS: tl.constexpr = BLOCK_K // SPLIT
    slices = k0 + tl.arange(0, SPLIT)[:, None, None] * KS
    ks_a = slices + tl.arange(0, KS)[None, None, :]        # (SPLIT, 1, KS)
    ks_b = slices + tl.arange(0, KS)[None, :, None]        # (SPLIT, KS, 1)
    mask = mask_b[None, :, None] & (ks_a < H)
    dg = tl.load(dg_row[None, :, :] + gate * H + ks_a, mask=mask, other=0.0, cache_modifier=".cg")
    w = tl.load(w_hh_ptr + (gate * H + ks_b).to(tl.int64) * H + offs_n[None, None, :],
                mask=(ks_b < H) & col_ok[None, None, :], other=0.0)
    if RANGE_SCALE:
        scale = tl.load(scale_row[None, :, :] + ks_a // BLOCK_H, mask=mask, other=0.0, cache_modifier=".cg")
        top = tl.max(tl.max(scale, axis=2), axis=0)[None, :, None]
        scaled = _rescale(dg, scale, top).to(w.dtype)
        return tl.dot(scaled, w, input_precision=DOT_PRECISION) * top
    else:
        return tl.dot(common.dot_operand(dg, w.dtype, DOT_PRECISION), w, input_precision=DOT_PRECISION)


@triton.jit
def _streamed_recurrent_product(dg_next, scale_next, w_hh_ptr, H, offs_n, col_ok, mask_b,
                                G: tl.constexpr, DOT_PRECISION: tl.constexpr,
                                RANGE_SCALE: tl.constexpr, BLOCK_B: tl.constexpr,
                                BLOCK_H: tl.constexpr, TILE_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                SPLIT: tl.constexpr):
    """dgates[t+1, rows, :] @ W_hh[:, slice] with W_hh read from L2 in K chunks, for hidden
    sizes whose slices do not fit on chip. Runs after the step's barrier, so the chunk
    loop may be pipelined."""
    if SPLIT == 1:
        acc = tl.zeros([BLOCK_B, TILE_N], dtype=tl.float32)
        for k0 in tl.range(0, H, BLOCK_K, num_stages=2):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = mask_b[:, None] & (offs_k < H)[None, :]
            for gate in tl.static_range(G):
                acc += _gate_product(dg_next, scale_next, gate, H, offs_k, mask_k,
                                     _load_gate_tile(w_hh_ptr, gate, H, offs_k, offs_n, col_ok),
                                     DOT_PRECISION, RANGE_SCALE, BLOCK_H)
        return acc
    else:
        # Gates outside the chunk loop: one gate's tiles in flight at a time keeps the
        # pipelined loop's registers (two stages of loads) within a 4-warp program's share.
        partial = tl.zeros([SPLIT, BLOCK_B, TILE_N], dtype=tl.float32)
        for gate in tl.static_range(G):
            for k0 in tl.range(0, H, BLOCK_K, num_stages=2):
                partial += _split_gate_product(dg_next, scale_next, w_hh_ptr, gate, H, k0, mask_b, offs_n,
                                               col_ok, DOT_PRECISION, RANGE_SCALE, SPLIT, BLOCK_K, BLOCK_H)
        return tl.sum(partial, axis=0)


@triton.jit
def _row_peak(magnitudes, mask):
    """Per row, the largest of a (BLOCK_B, BLOCK_H) block of magnitudes at valid entries."""
    return tl.max(tl.where(mask, magnitudes, 0.0), axis=1)


@triton.jit
def _exchange_scale(scale_row, peak, mask_b, RANGE_SCALE: tl.constexpr):
    """With RANGE_SCALE (fp16), stores per row the power of two that brings this program's
    largest gate gradient of the row (peak, over all its gates) near 2^13
    (common.range_shift) and returns its inverse, (BLOCK_B, 1), by which _store_gate
    multiplies the 16-bit copy; else 1."""
    if RANGE_SCALE:
        shift = common.range_shift(peak)
        tl.store(scale_row, tl.exp2(shift), mask=mask_b)
        return tl.exp2(-shift)[:, None]
    else:
        return tl.full(peak.shape, 1.0, tl.float32)[:, None]


@triton.jit
def _store_gate(dg_row, xch_row, offset, value, mask, inv_scale, EXCHANGE16: tl.constexpr):
    """Stores one gate's gradients (fp32) for the weight-gradient GEMMs and, with
    EXCHANGE16, a 16-bit copy (times inv_scale, see _exchange_scale) for the other
    programs' recurrent products (half the bytes every program reads per step)."""
    tl.store(dg_row + offset, value, mask=mask)
    if EXCHANGE16:
        tl.store(xch_row + offset, (value * inv_scale).to(xch_row.dtype.element_ty), mask=mask)


@triton.jit
def _lstm_step_backward(dh, dc_state, ws_row, prev_ws_row, c0_ptr, state_offs, has_prev, mask,
                        mask_b, offs_h, H, dg_ptrs_row, xch_row, scale_row, active,
                        EXCHANGE16: tl.constexpr, RANGE_SCALE: tl.constexpr):
    """Pointwise LSTM backward of one step; stores d(i, f, g, o) pre-activations and returns
    the carried dc_state."""
    i = tl.load(ws_row + 0 * H + offs_h[None, :], mask=mask, other=0.0)
    f = tl.load(ws_row + 1 * H + offs_h[None, :], mask=mask, other=0.0)
    g = tl.load(ws_row + 2 * H + offs_h[None, :], mask=mask, other=0.0)
    o = tl.load(ws_row + 3 * H + offs_h[None, :], mask=mask, other=0.0)
    c = tl.load(ws_row + 4 * H + offs_h[None, :], mask=mask, other=0.0)
    # c_{t-1}: the previous step's saved cell state, or c0 at t = 0.
    c_saved = tl.load(prev_ws_row + 4 * H + offs_h[None, :], mask=mask & has_prev, other=0.0)
    c_init = tl.load(c0_ptr + state_offs, mask=mask & ~has_prev, other=0.0).to(tl.float32)
    c_prev = tl.where(has_prev, c_saved, c_init)
    tanh_c = common.tanh(c)
    dc = dc_state + dh * o * (1.0 - tanh_c * tanh_c)
    keep = active[:, None]
    di = tl.where(keep, dc * g * i * (1.0 - i), 0.0)
    df = tl.where(keep, dc * c_prev * f * (1.0 - f), 0.0)
    dg = tl.where(keep, dc * i * (1.0 - g * g), 0.0)
    do = tl.where(keep, dh * tanh_c * o * (1.0 - o), 0.0)
    # One reduction over the gates' elementwise largest magnitudes.
    peak = _row_peak(tl.maximum(tl.maximum(tl.abs(di), tl.abs(df)), tl.maximum(tl.abs(dg), tl.abs(do))), mask)
    inv_scale = _exchange_scale(scale_row, peak, mask_b, RANGE_SCALE)
    _store_gate(dg_ptrs_row, xch_row, 0 * H + offs_h[None, :], di, mask, inv_scale, EXCHANGE16)
    _store_gate(dg_ptrs_row, xch_row, 1 * H + offs_h[None, :], df, mask, inv_scale, EXCHANGE16)
    _store_gate(dg_ptrs_row, xch_row, 2 * H + offs_h[None, :], dg, mask, inv_scale, EXCHANGE16)
    _store_gate(dg_ptrs_row, xch_row, 3 * H + offs_h[None, :], do, mask, inv_scale, EXCHANGE16)
    return tl.where(keep, dc * f, dc_state)


@triton.jit
def _gru_step_backward(dh, ws_row, h_prev_row, h0_ptr, state_offs, has_prev, mask, mask_b, offs_h, H,
                       dg_hidden_row, dg_input_row, xch_row, scale_row, active,
                       EXCHANGE16: tl.constexpr, RANGE_SCALE: tl.constexpr):
    """Pointwise GRU backward of one step; stores the input-side gate gradients [dr, dz, dn]
    and the hidden-side ones [dr, dz, dn * r], and returns dh_local = dh * z."""
    r = tl.load(ws_row + 0 * H + offs_h[None, :], mask=mask, other=0.0)
    z = tl.load(ws_row + 1 * H + offs_h[None, :], mask=mask, other=0.0)
    n = tl.load(ws_row + 2 * H + offs_h[None, :], mask=mask, other=0.0)
    hn = tl.load(ws_row + 3 * H + offs_h[None, :], mask=mask, other=0.0)
    # h_{t-1}: the previous output (an active step's predecessor is active), or h0 at t = 0.
    h_saved = tl.load(h_prev_row + offs_h[None, :], mask=mask & has_prev, other=0.0)
    h_init = tl.load(h0_ptr + state_offs, mask=mask & ~has_prev, other=0.0)
    h_prev = tl.where(has_prev, h_saved.to(tl.float32), h_init.to(tl.float32))
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dr = dn * hn * r * (1.0 - r)
    dz = dh * (h_prev - n) * z * (1.0 - z)
    keep = active[:, None]
    dr = tl.where(keep, dr, 0.0)
    dz = tl.where(keep, dz, 0.0)
    dn = tl.where(keep, dn, 0.0)
    tl.store(dg_input_row + 0 * H + offs_h[None, :], dr, mask=mask)
    tl.store(dg_input_row + 1 * H + offs_h[None, :], dz, mask=mask)
    tl.store(dg_input_row + 2 * H + offs_h[None, :], dn, mask=mask)
    dnr = dn * r
    peak = _row_peak(tl.maximum(tl.maximum(tl.abs(dr), tl.abs(dz)), tl.abs(dnr)), mask)
    inv_scale = _exchange_scale(scale_row, peak, mask_b, RANGE_SCALE)
    _store_gate(dg_hidden_row, xch_row, 0 * H + offs_h[None, :], dr, mask, inv_scale, EXCHANGE16)
    _store_gate(dg_hidden_row, xch_row, 1 * H + offs_h[None, :], dz, mask, inv_scale, EXCHANGE16)
    _store_gate(dg_hidden_row, xch_row, 2 * H + offs_h[None, :], dnr, mask, inv_scale, EXCHANGE16)
    return dh * z


@triton.jit
def _rnn_step_backward(dh, ws_row, mask, mask_b, offs_h, dg_row, xch_row, scale_row, active,
                       RELU: tl.constexpr, EXCHANGE16: tl.constexpr, RANGE_SCALE: tl.constexpr):
    """Pointwise Elman RNN backward of one step from the saved h_t: stores the
    pre-activation gradient (relu: where h_t > 0, as torch's threshold_backward; tanh:
    times 1 - h_t^2)."""
    h = tl.load(ws_row + offs_h[None, :], mask=mask, other=0.0)
    if RELU:
        dpre = tl.where(h > 0.0, dh, 0.0)
    else:
        dpre = dh * (1.0 - h * h)
    dpre = tl.where(active[:, None], dpre, 0.0)
    inv_scale = _exchange_scale(scale_row, _row_peak(tl.abs(dpre), mask), mask_b, RANGE_SCALE)
    _store_gate(dg_row, xch_row, offs_h[None, :], dpre, mask, inv_scale, EXCHANGE16)


# T, B and the iteration range change from call to call: specialising on them (== 1,
# multiples of 16) would compile a new variant for each.
@triton.jit(do_not_specialize=["t_hi", "t_lo", "T", "B"])
def _bptt_kernel(grad_y_ptr, workspace_ptr, y_ptr, h0_ptr, c0_ptr, w_hh_ptr, lengths_ptr,
                 dg_hidden_ptr, dg_input_ptr, dg_exchange_ptr, xch_scale_ptr, dh_state_ptr, carry_ptr,
                 barrier_ptr, error_ptr, t_hi, t_lo, T, B, H,
                 CELL: tl.constexpr, GRID_BARRIER: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 RANGE_SCALE: tl.constexpr, EXCHANGE16: tl.constexpr, RESIDENT: tl.constexpr,
                 BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                 SPLIT: tl.constexpr, MAX_POLLS: tl.constexpr, ABORT: tl.constexpr):
    """Runs iterations t = t_hi .. t_lo (descending) of the BPTT loop described above.

    All tensors are contiguous: grad_y, y (T, B, H); workspace (T, B, WS_WIDTH*H) fp32;
    h0, c0 and the state buffers (B, H); w_hh (GATES*H, H); gate gradients (T, B, GATES*H)
    fp32; dg_exchange the hidden-side gate gradients the programs exchange: a 16-bit copy
    (T, B, GATES*H) with EXCHANGE16, else dg_hidden itself; xch_scale (T, B, programs
    along H) fp32, with RANGE_SCALE the power of two each producer scaled its row of the
    copy by (else unused); lengths (B,). carry holds the cell's second carried state:
    dc_state (LSTM) or dh_local (GRU); the RNN has none (zeros).
    """
    # RANGE_SCALE (fp16) scales the 16-bit exchange copy: there is no fp32 exchange to scale.
    tl.static_assert(EXCHANGE16 or not RANGE_SCALE)
    G: tl.constexpr = 4 if CELL == 0 else (3 if CELL == 1 else 1)
    WS_WIDTH: tl.constexpr = 5 if CELL == 0 else (4 if CELL == 1 else 1)
    TILE_N: tl.constexpr = 16 if BLOCK_H < 16 else BLOCK_H
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    # The product's columns: this program's units, then (TILE_N > BLOCK_H) masked padding.
    offs_n = pid_h * BLOCK_H + tl.arange(0, TILE_N)
    col_ok = (tl.arange(0, TILE_N) < BLOCK_H) & (offs_n < H)
    offs_k = tl.arange(0, BLOCK_K)
    GH = G * H
    mask_b = offs_b < B
    mask = mask_b[:, None] & (offs_h < H)[None, :]
    mask_k = mask_b[:, None] & (offs_k < H)[None, :]
    state_offs = offs_b[:, None] * H + offs_h[None, :]

    if RESIDENT:
        # W_hh[:, slice], one tile per gate: on chip for the whole launch.
        w0 = _load_gate_tile(w_hh_ptr, 0, H, offs_k, offs_n, col_ok)
        if G > 1:
            w1 = _load_gate_tile(w_hh_ptr, 1, H, offs_k, offs_n, col_ok)
            w2 = _load_gate_tile(w_hh_ptr, 2, H, offs_k, offs_n, col_ok)
        if G > 3:
            w3 = _load_gate_tile(w_hh_ptr, 3, H, offs_k, offs_n, col_ok)
    length = tl.load(lengths_ptr + offs_b, mask=mask_b, other=0)
    dh_state = tl.load(dh_state_ptr + state_offs, mask=mask, other=0.0)
    carry = tl.load(carry_ptr + state_offs, mask=mask, other=0.0)
    # The LSTM carries dc_state; the GRU dh_local = dh * z (the part of dh_{t-1} that does
    # not go through W_hh); the RNN nothing.
    dh_local = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
    if CELL == 1:
        dh_local = carry

    # Steps at or past the longest sequence of this batch block have nothing to do: their
    # gate gradients stay zero (the launcher zeroes them) and the carried state passes
    # through. Every program of the block skips the same steps, so barrier counts agree.
    block_end = tl.max(length, axis=0).to(tl.int32)
    t_first = tl.minimum(t_hi, block_end - 1)
    # A while loop, untouched by the pipeliner (see common.py); ok turns False on abort.
    t = t_first
    arrivals = 0
    ok = t >= t_lo
    while ok:
        if (t + 1 < block_end) & (t < t_first):
            # Step t+1 ran in this launch: wait until every program wrote its gate
            # gradients (a launch boundary does this when it ran in the previous launch).
            arrivals += 1
            ok = common.step_barrier(barrier_ptr + pid_b, arrivals, error_ptr, GRID_BARRIER,
                                     MAX_POLLS, ABORT)
        if ok:
            if t + 1 < block_end:
                # Finish step t+1. int64 row offsets: t * B * G * H can pass 2^31.
                rows_next = (offs_b + (t + 1) * B).to(tl.int64)
                dg_next = dg_exchange_ptr + (rows_next * GH)[:, None]
                scale_next = xch_scale_ptr + (rows_next * tl.num_programs(1))[:, None]
                if RESIDENT:
                    rec = _gate_product(dg_next, scale_next, 0, H, offs_k, mask_k, w0, DOT_PRECISION,
                                        RANGE_SCALE, BLOCK_H)
                    if G > 1:
                        rec += _gate_product(dg_next, scale_next, 1, H, offs_k, mask_k, w1, DOT_PRECISION,
                                             RANGE_SCALE, BLOCK_H)
                        rec += _gate_product(dg_next, scale_next, 2, H, offs_k, mask_k, w2, DOT_PRECISION,
                                             RANGE_SCALE, BLOCK_H)
                    if G > 3:
                        rec += _gate_product(dg_next, scale_next, 3, H, offs_k, mask_k, w3, DOT_PRECISION,
                                             RANGE_SCALE, BLOCK_H)
                else:
                    rec = _streamed_recurrent_product(dg_next, scale_next, w_hh_ptr, H, offs_n, col_ok,
                                                      mask_b, G, DOT_PRECISION, RANGE_SCALE, BLOCK_B,
                                                      BLOCK_H, TILE_N, BLOCK_K, SPLIT)
                rec = _own_units(rec, BLOCK_B, BLOCK_H, TILE_N)
                dh_state = tl.where(((t + 1) < length)[:, None], rec + dh_local, dh_state)
            if t >= 0:
                # Process step t.
                rows = (offs_b + t * B).to(tl.int64)
                active = t < length
                has_prev = (rows >= B)[:, None]  # t > 0, as a block for the masks
                grad = tl.load(grad_y_ptr + rows[:, None] * H + offs_h[None, :], mask=mask, other=0.0)
                dh = dh_state + tl.where(active[:, None], grad.to(tl.float32), 0.0)
                ws_row = workspace_ptr + rows[:, None] * (WS_WIDTH * H)
                dg_row = dg_hidden_ptr + rows[:, None] * GH
                xch_row = dg_exchange_ptr + rows[:, None] * GH
                scale_row = xch_scale_ptr + rows * tl.num_programs(1) + pid_h
                if CELL == 0:
                    prev_ws_row = workspace_ptr + (rows - B)[:, None] * (WS_WIDTH * H)
                    carry = _lstm_step_backward(dh, carry, ws_row, prev_ws_row, c0_ptr, state_offs,
                                                has_prev, mask, mask_b, offs_h, H, dg_row, xch_row,
                                                scale_row, active, EXCHANGE16, RANGE_SCALE)
                elif CELL == 1:
                    h_prev_row = y_ptr + (rows - B)[:, None] * H
                    dh_local = _gru_step_backward(dh, ws_row, h_prev_row, h0_ptr, state_offs,
                                                  has_prev, mask, mask_b, offs_h, H, dg_row,
                                                  dg_input_ptr + rows[:, None] * GH, xch_row, scale_row,
                                                  active, EXCHANGE16, RANGE_SCALE)
                    carry = dh_local
                else:
                    _rnn_step_backward(dh, ws_row, mask, mask_b, offs_h, dg_row, xch_row, scale_row,
                                       active, CELL == 3, EXCHANGE16, RANGE_SCALE)
        t -= 1
        ok = ok & (t >= t_lo)

    tl.store(dh_state_ptr + state_offs, dh_state, mask=mask)
    tl.store(carry_ptr + state_offs, carry, mask=mask)


def _state_buffer(t: torch.Tensor) -> torch.Tensor:
    """A private fp32 contiguous copy: the kernel updates it in place."""
    return t.detach().to(torch.float32, memory_format=torch.contiguous_format, copy=True)


def kernel_meta(cell: int, plan: common.LaunchPlan, dtype: torch.dtype) -> dict:
    """Constexprs and launch options of the BPTT kernel for `plan` (also what the static
    GPU check compiles)."""
    return dict(CELL=cell, DOT_PRECISION=common.dot_precision(dtype),
                RANGE_SCALE=dtype == torch.float16, EXCHANGE16=exchanges_16_bit(dtype),
                RESIDENT=plan.resident, BLOCK_B=plan.block_b,
                BLOCK_H=plan.block_h, BLOCK_K=plan.block_k, SPLIT=plan.split,
                **common.launch_options(plan))


def exchanges_16_bit(dtype: torch.dtype) -> bool:
    """Whether the programs exchange the gate gradients in `dtype` rather than fp32 (half
    the bytes each program reads per step): bf16, whose range is fp32's, so the product is
    the same as casting at the consumer; fp16 with a power of two per (row, producer)
    beside it (exchange_scaled)."""
    return dtype in (torch.float16, torch.bfloat16)


def exchange_scaled(dtype: torch.dtype) -> bool:
    """Whether each program also exchanges one fp32 power of two per batch row (fp16: see
    the module docstring)."""
    return dtype == torch.float16


def exchange_dtype(dtype: torch.dtype) -> torch.dtype:
    """The type of the gate gradients every program reads each step."""
    return dtype if exchanges_16_bit(dtype) else torch.float32


def mock_args(dtype: torch.dtype, T: int, B: int, H: int) -> list:
    """The kernel's arguments as Triton sees them for specialisation, as _recurrence
    launches it: tensors by dtype, 16-byte aligned (common.aligned), integers by value."""
    f32, i32 = torch.float32, torch.int32
    pointer_dtypes = [dtype, f32, dtype, dtype, dtype, dtype, torch.int64, f32, f32,
                      exchange_dtype(dtype), f32, f32, f32, i32, i32]
    return [MockTensor(d) for d in pointer_dtypes] + [T - 1, -1, T, B, H]


def product(cell: int, dtype: torch.dtype) -> common.Product:
    """BPTT's recurrent product: the gates in the reduction, the units along N."""
    return common.Product(common.GATES[cell], stacked=False,
                          fma=common.dot_precision(dtype) == "ieee" and dtype == torch.float32,
                          exchange_size=exchange_dtype(dtype).itemsize, exchange_scaled=exchange_scaled(dtype))


def _plan(cell, w_hh, B, H, force_per_step, force_streamed) -> common.LaunchPlan:
    key = (cell, w_hh.dtype, common.dot_precision(w_hh.dtype))
    return common.launch_plan("bptt", w_hh.device, B, H, product(cell, w_hh.dtype), key, _bptt_kernel,
                              lambda: mock_args(w_hh.dtype, 64, B, H),
                              lambda plan: kernel_meta(cell, plan, w_hh.dtype), force_per_step,
                              force_streamed)


def _launch_ranges(T: int, plan: common.LaunchPlan, device):
    """(t_hi, t_lo, barrier counters) per launch, iterations descending: all of T-1 .. -1
    in one launch when persistent (split only where the int32 arrival count would grow
    too large), else one launch per iteration. Each launch gets zeroed counters."""
    if plan.persistent:
        steps = max(1, common.MAX_BARRIER_ARRIVALS // plan.programs_h)
        bounds = [(hi, max(hi - steps + 1, -1)) for hi in range(T - 1, -2, -steps)]
    else:
        bounds = [(t, t) for t in range(T - 1, -2, -1)]
    counters = common.barrier_counters(len(bounds), plan, device)
    return [(hi, lo, counter) for (hi, lo), counter in zip(bounds, counters)]


def _recurrence(cell, grad_y, grad_hT, grad_cT, h0, c0, w_hh, y, workspace, lengths,
                force_per_step=False, force_streamed=False):
    """Runs the BPTT kernel. Returns (dgates_hidden, dgates_input, dh0, dc0) in fp32, where
    dgates_input is dgates_hidden but for the GRU and dc0 is None but for the LSTM.

    Never synchronises with the host: a barrier timeout is reported through
    fastrnn.errors (a RuntimeError at the next fastrnn call or fastrnn.check_errors()).
    Plans and launches on y's device (Triton launches on the current one)."""
    with torch.cuda.device_of(y):
        return _run_recurrence(cell, grad_y, grad_hT, grad_cT, h0, c0, w_hh, y, workspace, lengths,
                               force_per_step, force_streamed)


def _run_recurrence(cell, grad_y, grad_hT, grad_cT, h0, c0, w_hh, y, workspace, lengths,
                    force_per_step, force_streamed):
    T, B, H = y.shape
    G = common.GATES[cell]
    is_lstm = cell == common.LSTM
    device = y.device
    # With lengths the kernel skips steps past a batch block's longest sequence, whose
    # gate gradients must read zero in the GEMMs.
    new_buffer = torch.empty if lengths is None else torch.zeros
    dg_hidden = new_buffer(T, B, G * H, device=device, dtype=torch.float32)
    dg_input = dg_hidden if cell != common.GRU else new_buffer(T, B, G * H, device=device,
                                                                dtype=torch.float32)
    # The gate gradients the programs read from each other (written at every step the
    # kernel runs, read at no other).
    dg_exchange = (torch.empty(T, B, G * H, device=device, dtype=w_hh.dtype)
                   if exchanges_16_bit(w_hh.dtype) else dg_hidden)
    dh_state = _state_buffer(grad_hT)
    # The LSTM carries dc_state; the GRU carries dh_local = dh * z of the last step.
    carry = _state_buffer(grad_cT) if is_lstm else torch.zeros_like(dh_state)
    if B == 0 or T == 0:
        return dg_hidden, dg_input, dh_state, (carry if is_lstm else None)
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.int64, device=device)
    else:
        # Lengths past T are an error, which the layer op reports (on CUDA after the call
        # returns); clamped so that the kernel never reads a step past the gate gradients.
        lengths = lengths.clamp(max=T)
    plan = _plan(cell, w_hh, B, H, force_per_step, force_streamed)
    meta = kernel_meta(cell, plan, w_hh.dtype)
    # One power of two per (step, row, program along H) for the fp16 copy; else unused.
    xch_scale = (torch.empty(T, B, plan.programs_h, device=device, dtype=torch.float32)
                 if exchange_scaled(w_hh.dtype) else dh_state)
    error = torch.zeros(1, dtype=torch.int32, device=device)
    # Inputs contiguous and aligned as the planner assumed (mock_args); cells without c0
    # pass h0 in the unused pointer.
    args = (tuple(common.aligned(t) for t in (grad_y, workspace, y, h0, c0 if is_lstm else h0))
            + (common.recurrent_weights(w_hh), common.aligned(lengths), dg_hidden, dg_input,
               dg_exchange, xch_scale, dh_state, carry))
    # Each launch runs iterations t_hi .. t_lo; t = -1 only finishes step 0.
    for t_hi, t_lo, counter in _launch_ranges(T, plan, device):
        _bptt_kernel[plan.grid](*args, counter, error, t_hi, t_lo, T, B, H, **meta)
    if plan.cooperative:
        errors.report(error, common.barrier_error_message("BPTT", plan))
    return dg_hidden, dg_input, dh_state, (carry if is_lstm else None)


def _gemm_gradients(dg_input, dg_hidden, x, h0, w_ih, w_hh, y):
    """dx, dW_ih, dW_hh over all steps at once, fp32 accumulation, in the input dtypes."""
    T, B, I = x.shape
    gi = dg_input.reshape(T * B, dg_input.shape[-1])
    gh = dg_hidden.reshape(T * B, dg_hidden.shape[-1])
    h_prev = torch.cat([h0.unsqueeze(0), y[:-1]], dim=0).reshape(T * B, h0.shape[-1])
    dx = (gi @ w_ih.float()).reshape(T, B, I).to(x.dtype)
    dw_ih = (gi.t() @ x.reshape(T * B, I).float()).to(w_ih.dtype)
    dw_hh = (gh.t() @ h_prev.float()).to(w_hh.dtype)
    return dx, dw_ih, dw_hh


def lstm_backward(grad_y, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, y, workspace, lengths,
                  force_per_step=False, force_streamed=False):
    """Gradients of an LSTM layer (no projection) from its forward output and workspace:
    (dx, dh0, dc0, dw_ih, dw_hh, dbias), as reference.lstm_layer_backward."""
    dgates, _, dh0, dc0 = _recurrence(common.LSTM, grad_y, grad_hT, grad_cT, h0, c0, w_hh, y,
                                      workspace, lengths, force_per_step, force_streamed)
    dx, dw_ih, dw_hh = _gemm_gradients(dgates, dgates, x, h0, w_ih, w_hh, y)
    dbias = dgates.reshape(-1, dgates.shape[-1]).sum(0).to(w_hh.dtype)
    return dx, dh0.to(h0.dtype), dc0.to(c0.dtype), dw_ih, dw_hh, dbias


def gru_backward(grad_y, grad_hT, x, h0, w_ih, w_hh, y, workspace, lengths, force_per_step=False,
                 force_streamed=False):
    """Gradients of a GRU layer from its forward output and workspace:
    (dx, dh0, dw_ih, dw_hh, db_ih, db_hh), as reference.gru_layer_backward."""
    dg_hidden, dg_input, dh0, _ = _recurrence(common.GRU, grad_y, grad_hT, None, h0, None, w_hh, y,
                                              workspace, lengths, force_per_step, force_streamed)
    dx, dw_ih, dw_hh = _gemm_gradients(dg_input, dg_hidden, x, h0, w_ih, w_hh, y)
    db_ih = dg_input.reshape(-1, dg_input.shape[-1]).sum(0).to(w_hh.dtype)
    db_hh = dg_hidden.reshape(-1, dg_hidden.shape[-1]).sum(0).to(w_hh.dtype)
    return dx, dh0.to(h0.dtype), dw_ih, dw_hh, db_ih, db_hh


def rnn_backward(cell, grad_y, grad_hT, x, h0, w_ih, w_hh, y, workspace, lengths,
                 force_per_step=False, force_streamed=False):
    """Gradients of an Elman RNN layer (cell RNN_TANH or RNN_RELU) from its forward output
    and workspace (the h_t of every step, fp32): (dx, dh0, dw_ih, dw_hh, dbias), where
    dbias is the gradient of both b_ih and b_hh."""
    dgates, _, dh0, _ = _recurrence(cell, grad_y, grad_hT, None, h0, None, w_hh, y, workspace,
                                    lengths, force_per_step, force_streamed)
    dx, dw_ih, dw_hh = _gemm_gradients(dgates, dgates, x, h0, w_ih, w_hh, y)
    dbias = dgates.reshape(-1, dgates.shape[-1]).sum(0).to(w_hh.dtype)
    return dx, dh0.to(h0.dtype), dw_ih, dw_hh, dbias
