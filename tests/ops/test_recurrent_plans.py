"""Launch planning, the barrier abort, TF32 and fp16 range safety of the recurrent Triton
kernels (fastrnn/ops/recurrent/).

The planner is tested with stated resources (what a compile would report), so the rules
hold whatever this machine can compile; the barrier abort and the fp16 product run the
real kernels under the interpreter.
"""
import dataclasses
import time

import pytest
import torch
import triton
import triton.language as tl

from fastrnn.ops.lstm import reference as lstm_reference
from fastrnn.ops.recurrent import backward, common, forward
from fastrnn.testing import assert_within_baseline, recurrent_reduction_length
from tests.ops.layer_cases import torch_layer

H100 = common.SM90


def resources(regs=128, spills=0, shared=16 * 1024, warps=4):
    return common.Resources(regs, spills, shared, warps)


# ------------------------------------------------------------------ the planner


LSTM_FORWARD = forward.product(common.LSTM, torch.float16)
LSTM_BPTT = backward.product(common.LSTM, torch.float16)
PRODUCTS = [dataclasses.replace(module.product(cell, torch.float16), fma=fma)
            for module in (forward, backward) for cell in (common.LSTM, common.GRU, common.RNN_TANH)
            for fma in (False, True)]


def test_candidates_never_replicate_warps_and_spread_over_the_sms():
    for B in (1, 16, 64, 256, 3, 100):
        for H in (96, 128, 768, 1000, 2048):
            for product in PRODUCTS:
                for plan in common.candidate_plans(B, H, product, H100.sms):
                    assert plan.tile_n == product.tile_n(plan.block_h) >= 16, plan
                    if plan.split > 1:   # warps on K slices of at least tl.dot's 16
                        assert plan.num_warps == plan.split and plan.block_k // plan.split >= 16, plan
                        # Streamed BPTT tiles, or resident forward tiles whose weights the
                        # output tile's warps could not hold.
                        assert product.stacked == plan.resident, plan
                        if plan.resident:
                            assert plan.split in common.RESIDENT_SPLITS, plan
                            assert not common.resident_fits(
                                dataclasses.replace(plan, split=1, num_warps=common.max_useful_warps(
                                    plan.block_b, plan.tile_n, product.fma)), product, 2), plan
                    else:
                        assert plan.num_warps <= common.max_useful_warps(plan.block_b, plan.tile_n,
                                                                         product.fma), plan
                    if plan.resident and product.stacked:   # K chunks cover H, padding < a chunk
                        assert plan.k_chunks <= common.MAX_K_CHUNKS, plan
                        assert H <= plan.block_k * plan.k_chunks < H + plan.block_k, plan
                    for block in (plan.block_b, plan.block_h, plan.block_k):   # tl.arange's powers of two
                        assert block & (block - 1) == 0, plan
            plans = common.candidate_plans(B, H, LSTM_FORWARD, H100.sms)
            for plan in plans:
                assert plan.block_b * plan.programs_b >= B and plan.block_h * plan.programs_h >= H
                if plan.persistent:
                    assert plan.programs <= common.RESIDENT_PER_SM * H100.sms, plan
                assert 4 * plan.block_b * plan.block_h <= common.MAX_TILE_OUTPUTS, plan
            first = plans[0]
            assert first.persistent
            # Resident plans come first, and no persistent candidate spreads the work
            # over more SMs than the first of its mode (grids of one program per SM first).
            modes = [p.mode for p in plans]
            assert modes == sorted(modes, key=["persistent", "streamed", "per-step"].index)
            for mode in ("persistent", "streamed"):
                same = [p for p in plans if p.mode == mode]
                within = [p for p in same if p.programs <= H100.sms]
                assert all(p.programs <= within[0].programs for p in within)
                assert same[:len(within)] == within
            for plan in plans:
                if plan.resident:
                    assert common.resident_fits(plan, LSTM_FORWARD, 2)


def test_large_hidden_sizes_spread_over_most_sms_at_small_batch():
    """H >= 768, B <= 64: the first candidate of the LSTM, GRU and RNN forward and BPTT,
    and the first streamed one, keep at least 96 of the 132 SMs busy (the forward stacks
    the gates of 4-8 units in one MMA, BPTT pads 8-unit tiles to 16 columns)."""
    for cell in (common.LSTM, common.GRU, common.RNN_TANH):
        for product in (forward.product(cell, torch.float16), backward.product(cell, torch.float16)):
            for B in (1, 16, 64):
                for H in (768, 1000, 1024, 2048):
                    plans = common.candidate_plans(B, H, product, H100.sms)
                    streamed = [p for p in plans if p.mode == "streamed"][0]
                    for plan in (plans[0], streamed):
                        assert plan.persistent and min(plan.programs, H100.sms) >= 96, (product, B, H, plan)


def test_headline_shape_first_choice():
    """B=16, H=768 (LSTM): 96 programs of 8 units each. The forward's product is 16 x 32
    (4 gates x 8 units); its W_hh slice (4 x 8 x 768 per program) would not fit the
    registers of the four warps that tile has columns for, so eight warps each hold an
    eighth of every K chunk (3 chunks of 256) and it stays on chip. BPTT's 8 units pad to
    16 columns and its four warps each reduce a quarter of every K chunk it streams."""
    plan = common.candidate_plans(16, 768, LSTM_FORWARD, H100.sms)[0]
    assert (plan.mode, plan.block_b, plan.block_h, plan.tile_n, plan.programs) == ("persistent", 16, 8, 32, 96)
    assert (plan.num_warps, plan.split, plan.block_k, plan.k_chunks) == (8, 8, 256, 3)
    streamed = [p for p in common.candidate_plans(16, 768, LSTM_FORWARD, H100.sms) if not p.resident][0]
    assert (streamed.mode, streamed.block_h, streamed.num_warps, streamed.split) == ("streamed", 8, 4, 1)
    plan = common.candidate_plans(16, 768, LSTM_BPTT, H100.sms)[0]
    assert (plan.mode, plan.block_b, plan.block_h, plan.tile_n, plan.programs) == ("streamed", 16, 8, 16, 96)
    assert (plan.num_warps, plan.split, plan.block_k) == (4, 4, 64)


def test_choose_plan_skips_what_cannot_be_co_resident():
    """Candidates planned for 132 SMs on a GPU where only 130 are available to us (as
    under MIG or SM partitioning): more programs than can be resident are refused.
    (H = 1048 in units of 8 gives 131 programs.)"""
    plans = common.candidate_plans(16, 1048, LSTM_FORWARD, H100.sms)
    partitioned = dataclasses.replace(H100, sms=130)

    def compiled(plan):
        return resources(regs=255, shared=150 * 1024, warps=plan.num_warps)   # one per SM

    chosen = common.choose_plan(plans, compiled, partitioned)
    assert chosen.mode == "streamed" and chosen.programs <= 130
    assert any(p.programs > 130 for p in plans if p.mode == "streamed")
    assert "131 programs cannot be co-resident" in chosen.reason
    assert not common.check_plan(chosen, compiled(chosen), partitioned)


def test_fallback_order_resident_then_streamed_then_per_step():
    plans = common.candidate_plans(64, 256, LSTM_FORWARD, H100.sms)
    seen = []

    def compiled(plan):
        seen.append(plan.mode)
        return resources(spills=64, warps=plan.num_warps)   # every persistent plan spills

    chosen = common.choose_plan(plans, compiled, H100)
    assert chosen.mode == "per-step"
    order = [m for i, m in enumerate(seen) if i == 0 or seen[i - 1] != m]
    assert order == ["persistent", "streamed", "per-step"]


def test_spilling_tiles_retry_with_half_the_k_chunk_before_fewer_sms():
    """A streamed tile that spills with 64-wide K chunks is tried with 32 before the
    planner gives up SMs (BPTT's split tile then has 2 warps of 16 each); among per-step
    plans, one that does not spill is preferred."""
    def spills_at_k64(plan):   # and every resident plan spills
        return resources(spills=8 if plan.block_k == 64 or plan.resident else 0, warps=plan.num_warps)
    chosen = common.choose_plan(common.candidate_plans(16, 768, LSTM_FORWARD, H100.sms), spills_at_k64, H100)
    assert (chosen.block_h, chosen.block_k, chosen.programs, chosen.num_warps) == (8, 32, 96, 4)
    chosen = common.choose_plan(common.candidate_plans(16, 768, LSTM_BPTT, H100.sms), spills_at_k64, H100)
    assert (chosen.block_h, chosen.block_k, chosen.split, chosen.num_warps) == (8, 32, 2, 2)

    def only_narrow_per_step_is_clean(plan):
        clean = not plan.persistent and plan.block_h == 32
        return resources(spills=0 if clean else 8, warps=plan.num_warps)
    chosen = common.choose_plan(common.candidate_plans(16, 768, LSTM_FORWARD, H100.sms),
                                only_narrow_per_step_is_clean, H100)
    assert (chosen.mode, chosen.block_h) == ("per-step", 32)

    def all_spill_narrow_chunks_least(plan):
        return resources(spills=16 if plan.block_k == 32 else 1024, warps=plan.num_warps)
    chosen = common.choose_plan(common.candidate_plans(16, 768, LSTM_FORWARD, H100.sms),
                                all_spill_narrow_chunks_least, H100)
    assert (chosen.mode, chosen.block_h, chosen.block_k) == ("per-step", 64, 32)
    assert "spills least" in chosen.reason


def test_forced_streamed_plans_that_all_spill_take_the_co_resident_one_that_spills_least():
    """A forced persistent mode has no per-step plan to fall back on: the streamed plan
    that spills least among those whose programs are all resident is taken (as Triton 3.6
    compiles BPTT's exact-fp32 streamed tiles at H=37: 8 B and more of spills each)."""
    plans = [p for p in common.candidate_plans(64, 256, LSTM_BPTT, H100.sms) if p.mode == "streamed"]
    assert len(plans) > 2 and not any(p.mode == "per-step" for p in plans)
    fewest = plans[1]

    def compiled(plan):
        if plan is plans[0]:   # spills least, but one program per SM: not co-resident
            return resources(spills=4, regs=255, shared=150 * 1024, warps=plan.num_warps)
        return resources(spills=8 if plan is fewest else 24, warps=plan.num_warps)

    few_sms = dataclasses.replace(H100, sms=plans[0].programs - 1)
    chosen = common.choose_plan(plans, compiled, few_sms)
    assert chosen == dataclasses.replace(fewest, reason=chosen.reason)
    assert "so the persistent plan that spills least" in chosen.reason


def test_no_plan_fits_raises():
    plans = common.candidate_plans(16, 768, LSTM_FORWARD, H100.sms)
    with pytest.raises(RuntimeError, match="no launch plan"):
        common.choose_plan(plans, lambda p: resources(shared=10**6), H100)


def test_occupancy_from_registers_threads_and_shared_memory():
    assert common.programs_per_sm(resources(regs=255, warps=8, shared=0), H100) == 1
    assert common.programs_per_sm(resources(regs=64, warps=4, shared=0), H100) == 65536 // (64 * 128)
    assert common.programs_per_sm(resources(regs=32, warps=4, shared=0), H100) == 2048 // 128
    assert common.programs_per_sm(resources(regs=32, warps=4, shared=100 * 1024), H100) == 2
    assert common.programs_per_sm(resources(regs=32, warps=4, shared=230 * 1024), H100) == 0


def test_plan_is_chosen_once_per_key():
    calls = []
    key = ("test", object())
    for _ in range(3):
        common.cached_plan(key, lambda: calls.append(1) or common.interpreter_plan(4, 8, LSTM_FORWARD, False, False))
    assert len(calls) == 1


def test_tf32_follows_torch_switch():
    old = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True
        assert common.dot_precision(torch.float32) == "tf32"
        assert not forward.product(common.LSTM, torch.float32).fma
        torch.backends.cudnn.allow_tf32 = False
        assert common.dot_precision(torch.float32) == "ieee"
        # Exact fp32 runs on the FMA units, whose outputs spread over every thread: an
        # exact product gets more warps than an MMA tile of the same shape could use.
        assert backward.product(common.LSTM, torch.float32).fma
        assert not backward.product(common.LSTM, torch.bfloat16).fma
        assert common.max_useful_warps(64, 32, fma=True) == 8
        assert common.max_useful_warps(64, 32) == 4
    finally:
        torch.backends.cudnn.allow_tf32 = old


# ------------------------------------------------------------------ split hidden sizes


KINDS = {common.LSTM: "LSTM", common.GRU: "GRU", common.RNN_TANH: "RNN"}


def _fp32_inputs(cell, T, B, I, H, seed):
    """x, the initial states and torch.nn's initial weights, as float64 tensors holding
    float32 values: the kernels compute in fp32 whatever the input dtype, so the fp64 and
    fp32 oracles then see exactly the kernels' inputs. Also the output cotangent."""
    torch.manual_seed(3)
    module = {common.LSTM: torch.nn.LSTM, common.GRU: torch.nn.GRU}.get(cell, torch.nn.RNN)(I, H)
    g = torch.Generator().manual_seed(seed)
    states = [torch.randn(B, H, generator=g) for _ in range(2 if cell == common.LSTM else 1)]
    x, grad_y = torch.randn(T, B, I, generator=g), torch.randn(T, B, H, generator=g)
    weights = [p.detach() for p in module.parameters()]
    return [t.double() for t in (x, *states, *weights)], grad_y.double()


def _torch_results(cell, inputs, grad_y):
    """torch.nn's layer in fp64 (the oracle) and in fp32 (PyTorch's own error) on `inputs`:
    y, h_T, then the gradients of sum(y * grad_y) in the kernels' order (x, the states,
    w_ih, w_hh, b_hh; the LSTM's and RNN's b_hh gradient is also b_ih's)."""
    n_states = 2 if cell == common.LSTM else 1

    def run(x, *rest):
        states, weights = list(rest[:n_states]), list(rest[n_states:])
        y, h_t, *_ = torch_layer(KINDS[cell], x, states, weights)
        leaves = [x, *states, weights[0], weights[1], weights[3]]
        return [y.detach(), h_t.detach(), *torch.autograd.grad(y, leaves, grad_y.to(x.dtype))]
    leaves = [[t.to(dtype).requires_grad_() for t in inputs] for dtype in (torch.float64, torch.float32)]
    return run(*leaves[0]), run(*leaves[1])


def _assert_fp32_accurate(got, expected, baseline, names, K):
    """Kernel results (float64 tensors computed in fp32) under the same-dtype rule for fp32."""
    for name, a, e, b in zip(names, got, expected, baseline):
        assert_within_baseline(a.float(), b, e, name, reduction_length=K)


@pytest.mark.interpreter
@pytest.mark.parametrize("cell", [common.LSTM, common.GRU, common.RNN_TANH],
                         ids=["lstm", "gru", "rnn_tanh"])
def test_smallest_unit_blocks_match_torch(cell, monkeypatch):
    """Plans that split H over programs with the fewest units each: the forward's stacked
    gates (4 units = 16 columns for the LSTM and GRU, the GRU's fourth slot masked; 8
    units in two slots for the RNN, the second masked) and
    BPTT's 8-unit tiles padded to 16 columns, resident, streamed and with the K chunks
    split over 4 warps; H = 70 leaves the last program partly empty. Per-step launches
    (no grid barrier, which the interpreter cannot run) give the same index math as
    persistent ones. Oracle: torch.nn's layer in fp64 and its autograd, with its fp32
    error as the bound (the same-dtype rule)."""
    T, B, I, H = 2, 3, 5, 70
    inputs, grad_y = _fp32_inputs(cell, T, B, I, H, seed=4)
    expected, baseline = _torch_results(cell, inputs, grad_y)
    K = recurrent_reduction_length(T, B, I, H, common.GATES[cell])
    x, h0 = inputs[:2]
    c0 = inputs[2] if cell == common.LSTM else None
    w_ih, w_hh, b_ih, b_hh = inputs[-4:]

    fw = forward.product(cell, torch.float64)
    units = fw.min_units
    plans = [common.LaunchPlan(16, units, 128 if resident else 32, 1, -(-H // units), resident, False,
                               2, fw.tile_n(units)) for resident in (True, False)]
    # Resident weights in 3 K chunks of 32 (H = 70 leaves the third partly empty), each
    # chunk's K split over 2 warps: split into 4-unit programs, and one program over all
    # of H running every step in one launch (the persistent loop, with the next step's
    # input projection loaded ahead).
    plans += [common.LaunchPlan(16, units, 32, 1, -(-H // units), True, False, 2, fw.tile_n(units),
                                split=2, k_chunks=3),
              common.LaunchPlan(16, 128, 32, 1, 1, True, True, 2, fw.tile_n(128), split=2, k_chunks=3)]
    for plan in plans:
        monkeypatch.setattr(forward, "_plan", lambda *args: plan)
        y, h_t, c_t, workspace = forward.run_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None)
        _assert_fp32_accurate([y, h_t], expected, baseline, ["y", "h_T"], K)

    zeros = torch.zeros_like(h0)
    names = ["dx", "dh0"] + (["dc0"] if cell == common.LSTM else []) + ["dw_ih", "dw_hh", "db_hh"]
    for resident, split in ((True, 1), (False, 1), (False, 4)):
        plan = common.LaunchPlan(16, 8, 128 if resident else (64 if split > 1 else 16), 1, -(-H // 8),
                                 resident, False, 4, 16, split)
        monkeypatch.setattr(backward, "_plan", lambda *args: plan)
        if cell == common.LSTM:
            grads = backward.lstm_backward(grad_y, zeros, zeros, x, h0, c0, w_ih, w_hh, y, workspace, None)
        elif cell == common.GRU:
            dx, dh0, dw_ih, dw_hh, _, db_hh = backward.gru_backward(grad_y, zeros, x, h0, w_ih, w_hh, y,
                                                                    workspace, None)
            grads = (dx, dh0, dw_ih, dw_hh, db_hh)
        else:
            grads = backward.rnn_backward(cell, grad_y, zeros, x, h0, w_ih, w_hh, y, workspace, None)
        _assert_fp32_accurate(grads, expected[2:], baseline[2:], names, K)


@pytest.mark.parametrize("module", [forward, backward], ids=["forward", "bptt"])
@pytest.mark.parametrize("cell", [common.LSTM, common.GRU, common.RNN_TANH], ids=["lstm", "gru", "rnn_tanh"])
def test_interpreter_plan_tiles_stay_within_triton_largest_tensor(module, cell):
    """One program over H holds its whole weight slice; past Triton's largest tensor (2^20
    elements) the interpreter could not run it, so the plan takes K chunks or streams."""
    product = module.product(cell, torch.float32)
    for H in (64, 512, 768, 1024, 2048, 4096):
        plan = common.interpreter_plan(16, H, product, False, False)
        assert plan.block_k * plan.tile_n <= 2 ** 20, (H, plan)
        assert not plan.resident or plan.block_k * plan.k_chunks >= H, (H, plan)
        assert plan.resident or H > 1024, (H, plan)


@pytest.mark.interpreter
@pytest.mark.parametrize("H", [768, 2048])
def test_interpreter_default_plan_at_large_hidden_sizes_matches_torch(H):
    """The interpreter's own plan (no forced mode) where a single resident tile of the
    LSTM's four gates (4 x 1024 columns by K = 1024 at H = 768) would pass Triton's largest
    tensor: the forward's weights in K chunks, and BPTT's per-gate tiles resident at 768
    and streamed at 2048. Oracle: torch.nn's LSTM and its autograd in fp64, with its fp32
    error as the bound."""
    T, B, I = 2, 2, 8
    inputs, grad_y = _fp32_inputs(common.LSTM, T, B, I, H, seed=6)
    expected, baseline = _torch_results(common.LSTM, inputs, grad_y)
    K = recurrent_reduction_length(T, B, I, H, 4)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = inputs
    y, _, _, workspace = forward.run_forward(common.LSTM, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None)
    zeros = torch.zeros_like(h0)
    dx, _, _, _, dw_hh, *_ = backward.lstm_backward(grad_y, zeros, zeros, x, h0, c0, w_ih, w_hh, y,
                                                    workspace, None)
    _assert_fp32_accurate([y, dx, dw_hh], [expected[i] for i in (0, 2, 6)],
                          [baseline[i] for i in (0, 2, 6)], ["y", "dx", "dw_hh"], K)


@triton.jit
def _tanh_kernel(x_ptr, y_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, common.tanh(tl.load(x_ptr + offs, mask=offs < N)), mask=offs < N)


@pytest.mark.interpreter
def test_tanh_within_two_ulp_of_float64():
    """The kernels' tanh against float64 tanh, in ulps of the fp32 result, over every
    magnitude the gates see (and signed zero, subnormals, huge values, inf)."""
    g = torch.Generator().manual_seed(2)
    x = torch.cat([torch.linspace(-8, 8, 200001), torch.randn(100000, generator=g) * 1e-3,
                   torch.tensor([0.0, -0.0, 1e-40, -1e-40, 0.55, -0.55, 50.0, -50.0, float("inf"),
                                 -float("inf")])])
    y = torch.empty_like(x)
    _tanh_kernel[(triton.cdiv(x.numel(), 4096),)](x, y, x.numel(), BLOCK=4096)
    exact = torch.tanh(x.double())
    ulp = torch.finfo(torch.float32).eps * exact.abs().float().clamp_min(torch.finfo(torch.float32).tiny)
    err = (y.double() - exact).abs() / ulp.double()
    assert err.max().item() <= 2.0, x[err.argmax()].item()
    assert torch.equal(torch.signbit(y[x == 0]), torch.signbit(x[x == 0]))
    assert torch.isnan(common_tanh_of(float("nan")))


def common_tanh_of(value: float) -> torch.Tensor:
    x = torch.tensor([value])
    y = torch.empty_like(x)
    _tanh_kernel[(1,)](x, y, 1, BLOCK=16)
    return y


@triton.jit
def _tf32_kernel(x_ptr, y_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, common.round_to_tf32(tl.load(x_ptr + offs, mask=offs < N)), mask=offs < N)


def _tf32_oracle(x: torch.Tensor) -> torch.Tensor:
    """x rounded to 10 mantissa bits, ties away from zero, in float64 arithmetic: the
    quantum is 2^(e - 10) for |x| in [2^e, 2^(e+1)), e >= -126 (fp32's normal range;
    below it the subnormals' fixed exponent)."""
    a = x.double().abs()
    e = torch.floor(torch.log2(a.clamp_min(2.0 ** -149))).clamp_min(-126)
    quantum = torch.exp2(e - 10)
    rounded = torch.floor(a / quantum + 0.5) * quantum
    return torch.where(torch.isfinite(x), torch.copysign(rounded, x.double()), x.double()).float()


@pytest.mark.interpreter
def test_tf32_rounding_to_nearest_ties_away():
    """round_to_tf32 (kernel) and tf32_rounded (host) against the float64 definition, on
    ties, both signs, zeros, subnormals, the largest float (rounds to inf), inf and NaN."""
    g = torch.Generator().manual_seed(3)
    ties = torch.tensor([1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, -(1 + 2.0 ** -11), 1 + 2.0 ** -12,
                         1 + 2.0 ** -11 + 2.0 ** -20, 3e-39, -1e-45, 0.0, -0.0])
    x = torch.cat([torch.randn(50000, generator=g) * 10.0 ** torch.randint(-30, 30, (50000,), generator=g),
                   ties, torch.tensor([torch.finfo(torch.float32).max, float("inf"), -float("inf")])])
    y = torch.empty_like(x)
    _tf32_kernel[(triton.cdiv(x.numel(), 4096),)](x, y, x.numel(), BLOCK=4096)
    expected = _tf32_oracle(x)
    assert torch.equal(y, expected) and torch.equal(common.tf32_rounded(x), expected)
    assert torch.equal(torch.signbit(y), torch.signbit(expected))
    nan = torch.tensor([float("nan")])
    assert torch.isnan(common.tf32_rounded(nan)).all()
    _tf32_kernel[(1,)](nan, y, 1, BLOCK=16)
    assert torch.isnan(y[0])


def test_tf32_weights_rounded_once_per_update(monkeypatch):
    """The rounded copy of W_hh is reused while the weight is unchanged, and made again
    after an in-place update (an optimizer step) or for a new tensor at the same size."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    w = torch.randn(8, 4, generator=torch.Generator().manual_seed(4))
    first = common.recurrent_weights(w)
    assert common.recurrent_weights(w) is first
    assert torch.equal(first, _tf32_oracle(w))
    with torch.no_grad():
        w.mul_(3.0)
    updated = common.recurrent_weights(w)
    assert updated is not first and torch.equal(updated, _tf32_oracle(w))
    other = torch.randn(8, 4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(common.recurrent_weights(other), _tf32_oracle(other))
    with torch.inference_mode():   # weights made there have no version counter to key on
        frozen = torch.randn(8, 4, generator=torch.Generator().manual_seed(6))
        assert torch.equal(common.recurrent_weights(frozen), _tf32_oracle(frozen))
    assert torch.equal(common.recurrent_weights(frozen), _tf32_oracle(frozen))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert common.recurrent_weights(w) is w


def _tf32_cell_loop(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, dtype):
    """The forward in `dtype` with the recurrent product's operands, h_{t-1} and W_hh,
    rounded to TF32 (_tf32_oracle) before each step's product; returns y (T, B, H)."""
    def cast(t):
        return t.to(dtype)
    w = _tf32_oracle(w_hh).to(dtype)
    h, c = cast(h0), (cast(c0) if c0 is not None else None)
    ys = []
    for t in range(x.shape[0]):
        gx = cast(x[t]) @ cast(w_ih).t() + cast(b_ih)
        gh = _tf32_oracle(h.float()).to(dtype) @ w.t() + cast(b_hh)
        if cell == common.LSTM:
            i, f, g, o = (gx + gh).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        else:
            (xr, xz, xn), (hr, hz, hn) = gx.chunk(3, 1), gh.chunk(3, 1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            h = (1 - z) * torch.tanh(xn + r * hn) + z * h
        ys.append(h)
    return torch.stack(ys)


@pytest.mark.interpreter
@pytest.mark.parametrize("cell", [common.LSTM, common.GRU])
def test_tf32_forward_multiplies_rounded_operands(cell):
    """With TF32 on, the forward multiplies h_{t-1} and W_hh both rounded to TF32 (as
    cuBLAS rounds, where a tf32 tl.dot alone truncates). Oracle: that computation in
    float64 (_tf32_cell_loop); bound: the same loop's own float32 error. Without the
    rounding the error is TF32's (~2^-11 of each operand), far past that bound."""
    T, B, I, H = 4, 3, 8, 16
    inputs, _ = _fp32_inputs(cell, T, B, I, H, seed=7)
    inputs = [t.float() for t in inputs]
    if cell == common.LSTM:
        x, h0, c0, w_ih, w_hh, b_ih, b_hh = inputs
    else:
        (x, h0, w_ih, w_hh, b_ih, b_hh), c0 = inputs, None
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        y = forward.run_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None)[0]
    finally:
        torch.backends.cudnn.allow_tf32 = old
    expected, baseline = (_tf32_cell_loop(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, dtype)
                          for dtype in (torch.float64, torch.float32))
    assert_within_baseline(y, baseline, expected, "y", reduction_length=recurrent_reduction_length(
        T, B, I, H, 4 if cell == common.LSTM else 3))


# ------------------------------------------------------------------ the barrier abort


def _lstm_args(T, B, I, H, device, dtype=torch.float32, scale=0.3):
    g = torch.Generator().manual_seed(1)

    def rand(*shape):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)
    return (rand(T, B, I), rand(B, H), rand(B, H), rand(4 * H, I), rand(4 * H, H), rand(4 * H),
            rand(4 * H))


@pytest.mark.interpreter
def test_barrier_that_never_completes_aborts_quickly_with_a_named_error(monkeypatch):
    """Two programs share the hidden size, but under the interpreter the first runs alone
    until it gives up: the launch must end (every program leaves its loop) and the call
    raise the RuntimeError that names the cause and the way out."""
    monkeypatch.setattr(common, "MAX_BARRIER_POLLS", 50)
    T, B, I, H = 4, 2, 3, 32
    split = common.LaunchPlan(16, 16, 32, 1, 2, True, True, 4, 64)
    monkeypatch.setattr(forward, "_plan", lambda *args: split)
    start = time.time()
    with pytest.raises(RuntimeError, match="grid barrier.*timed out.*FASTRNN_BACKEND=ext"):
        forward.run_forward(common.LSTM, *_lstm_args(T, B, I, H, "cpu"), None)
    assert time.time() - start < 60


@pytest.mark.interpreter
def test_bptt_barrier_that_never_completes_aborts(monkeypatch):
    monkeypatch.setattr(common, "MAX_BARRIER_POLLS", 50)
    T, B, I, H = 4, 2, 3, 32
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _lstm_args(T, B, I, H, "cpu")
    y, _, _, workspace = forward.run_forward(common.LSTM, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None)
    split = common.LaunchPlan(16, 16, 32, 1, 2, True, True, 4, 64)
    monkeypatch.setattr(backward, "_plan", lambda *args: split)
    with pytest.raises(RuntimeError, match="BPTT kernel timed out"):
        backward.lstm_backward(torch.ones_like(y), torch.zeros_like(h0), torch.zeros_like(c0), x, h0,
                               c0, w_ih, w_hh, y, workspace, None)


# ------------------------------------------------------------------ fp16 range


@pytest.mark.interpreter
@pytest.mark.parametrize("split", [1, 4], ids=["one-warp-k", "k-split-4-ways"])
def test_fp16_backward_with_gradscaler_scale_matches_the_exact_gradients(monkeypatch, split):
    """Upstream gradients scaled by 2^16 (GradScaler's default) push the fp32 gate
    gradients past fp16's 65504. Wherever the exact gradient (fp64 reference) is finite in
    fp16, ours must be finite and as close as fp16 allows; a plain fp16 cast of the gate
    gradients before the recurrent product would turn such entries into inf. Both forms
    of the product: whole K chunks, and chunks split over 4 warps (8-unit programs)."""
    T, B, I, H = 4, 2, 3, 16
    if split > 1:
        plan = common.LaunchPlan(16, 8, 64, 1, 2, False, False, split, 16, split)
        monkeypatch.setattr(backward, "_plan", lambda *args: plan)
    g = torch.Generator().manual_seed(1)

    def rand(*shape, scale):
        return (torch.randn(*shape, generator=g) * scale).half()
    # A large W_hh grows the gradient backward in time; a small W_ih keeps dx in range.
    x, h0, c0 = rand(T, B, I, scale=1.0), rand(B, H, scale=0.5), rand(B, H, scale=0.5)
    w_ih, w_hh = rand(4 * H, I, scale=3e-4), rand(4 * H, H, scale=2.0)
    b_ih, b_hh = rand(4 * H, scale=0.5), rand(4 * H, scale=0.5)
    y, _, _, workspace = forward.run_forward(common.LSTM, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None)
    grad_y = torch.zeros(T, B, H, dtype=torch.float16)
    grad_y[-1] = 2.0 ** 15     # a loss gradient of 0.5 times GradScaler's 2^16
    zeros = torch.zeros_like(h0)
    names = ["dx", "dh0", "dc0", "dw_ih", "dw_hh", "dbias"]

    def ours():
        return backward.lstm_backward(grad_y, zeros, zeros, x, h0, c0, w_ih, w_hh, y, workspace, None)

    exact = lstm_reference.lstm_layer_backward(
        grad_y.double(), zeros.double(), zeros.double(), x.double(), h0.double(), c0.double(),
        w_ih.double(), w_hh.double(), None, y.double(), workspace.double(), None)
    exact = exact[:6]   # the last is dW_hr (no projection here)
    representable = [torch.isfinite(e.half()) for e in exact]
    for name, got, e, ok in zip(names, ours(), exact, representable):
        assert torch.isfinite(got[ok]).all(), name
        tol = 1e-2 * e[ok].abs().max().item()
        assert (got[ok].double() - e[ok]).abs().max().item() <= tol, name
    # The case really needs the scaling: a plain fp16 cast of the gate gradients
    # overflows where the exact result is representable.
    plain_meta = backward.kernel_meta
    monkeypatch.setattr(backward, "kernel_meta",
                        lambda *args: dict(plain_meta(*args), RANGE_SCALE=False))
    assert any((~torch.isfinite(got) & ok).any() for got, ok in zip(ours(), representable))


# ------------------------------------------------------------------ CUDA graphs (GPU only)


@pytest.mark.cuda
@pytest.mark.parametrize("module", ["LSTM", "GRU", "RNN"])
def test_forward_backward_and_sampling_capture_in_a_cuda_graph(module):
    """No host synchronisation in the steady state: a training step of the layer and a
    sampling call at fixed shapes record into one CUDA graph, and replays match eager."""
    import fastrnn
    torch.manual_seed(0)
    layer = getattr(fastrnn, module)(32, 64).cuda()
    x = torch.randn(20, 8, 32, device="cuda", requires_grad=True)
    logits = torch.randn(8, 1000, device="cuda")
    seeds = torch.arange(8, device="cuda")

    def step():
        y, _ = layer(x)
        y.square().sum().backward()
        return y.detach(), x.grad.detach().clone(), fastrnn.sample(logits, 0.8, top_p=0.9, seed=seeds)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):   # warm-up compiles and plans outside the capture
        for _ in range(2):
            x.grad = None
            eager = step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    x.grad = None
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(captured, eager):
        torch.testing.assert_close(a, b)
    fastrnn.check_errors()
