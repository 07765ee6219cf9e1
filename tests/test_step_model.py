"""The step-time model (fastrnn/ops/recurrent/step_model.py): its monotonicities, the
committed tables reproduced from the code, and the planner choosing by it."""
import dataclasses
import json

import pytest
import torch

from benchmarks import step_model_table
from fastrnn.ops.recurrent import backward, common, forward, step_model as m

H100 = common.SM90
HEADLINE = m.row_split("headline", "lstm", "forward", 16, 768, 128, 4, k_split=4)
HEADLINE_BPTT = m.row_split("headline", "lstm", "backward", 16, 768, 96, 8, k_split=8)


def us(design, **changes):
    return m.step_time(dataclasses.replace(design, **changes)).us


@pytest.mark.parametrize("design", [HEADLINE, HEADLINE_BPTT, m.cudnn_persistent(), m.flashrnn_fused()])
def test_more_traffic_is_never_faster(design):
    base = us(design)
    assert us(design, exchange_bytes=2 * design.exchange_bytes + 1024) > base
    assert us(design, store_bytes=design.store_bytes + 4096) > base
    assert us(design, exchange_hops=design.exchange_hops + 1) > base
    streamed = us(design, weights=m.L2, pipelined=True)
    assert streamed > base and us(design, weights=m.SHARED) > base
    assert us(design, programs=2 * m.SMS) > us(design, programs=m.SMS)   # two programs per SM share its port


@pytest.mark.parametrize("design", [HEADLINE, HEADLINE_BPTT, m.cudnn_persistent(), m.flashrnn_fused()])
def test_fewer_or_cheaper_syncs_are_never_slower(design):
    kinds = [m.NONE, m.CTA, m.FLAGS, m.BARRIER]
    times = [us(design, sync=kind, syncs=1) for kind in kinds]
    assert times == sorted(times)
    assert us(design, syncs=1) <= us(design, syncs=2) <= us(design, syncs=3)
    assert us(design, input_prefetched=True) <= us(design, input_prefetched=False)
    assert us(design, launches=0) < us(design, launches=1)


def test_longer_mma_chain_is_never_faster_and_fp32_exchange_costs_more():
    assert us(HEADLINE, mma_chain=2 * HEADLINE.mma_chain) >= us(HEADLINE)
    fp32 = m.row_split("x", "lstm", "backward", 16, 768, 96, 8, k_split=8, exchange_size=4)
    assert m.step_time(fp32).us > m.step_time(HEADLINE_BPTT).us


def test_cell_constants_agree_with_common():
    assert {m.cell_name(c) for c in (common.LSTM,)} == {"lstm"}
    assert m.cell_name(common.GRU) == "gru" and m.cell_name(common.RNN_TANH) == m.cell_name(common.RNN_RELU) == "rnn"
    assert {m.GATES[m.cell_name(c)] for c in (common.LSTM, common.GRU, common.RNN_TANH)} == \
        {common.GATES[c] for c in (common.LSTM, common.GRU, common.RNN_TANH)}


def test_calibration_and_table_are_reproduced_from_the_code():
    """The committed Markdown is what the code writes (so it cannot drift), and every
    anchor with a persistent or fused design lands within the stated error."""
    assert step_model_table.CALIBRATION_MD.read_text() == step_model_table.calibration_markdown()
    rows = json.loads(step_model_table.STATIC_JSON.read_text())["rows"]
    assert step_model_table.TABLE_MD.read_text() == step_model_table.table_markdown(rows)
    errors = {(a.design.name, a.design.direction): m.step_time(a.design).us / a.published_us - 1
              for a in m.anchors() if a.design.launches == 0}
    assert max(abs(e) for e in errors.values()) < 0.27
    within = [k for k, e in errors.items() if abs(e) <= 0.25]
    assert len(within) >= len(errors) - 2   # cuDNN's BPTT and FlashRNN's Triton: see the .md


def test_gpu_static_reports_the_model_of_its_plan():
    gpu_static = pytest.importorskip("benchmarks.gpu_static")
    plan = common.candidate_plans(16, 768, forward.product(common.LSTM, torch.float16), H100.sms)[0]
    row = gpu_static.step_estimate(plan, common.LSTM, "fp16", "ieee", 768, "forward")
    assert row["est_step_us"] == round(m.plan_step_us(plan, "lstm", "forward", 2, "fp16", 768), 2)
    streamed = 0 if plan.resident else 4 * plan.block_h * 768 * 2
    assert row["l2_bytes_per_step"] == (16 * 768 * 2 + streamed) * plan.programs


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_bptt_model_counts_the_exchanged_dtype(dtype):
    """BPTT's modelled exchange is B x gates*H elements of backward.exchange_dtype per
    program (fp16 also one fp32 scale per row and program), in the planner (Product) and
    the static check alike."""
    gpu_static = pytest.importorskip("benchmarks.gpu_static")
    product = backward.product(common.LSTM, dtype)
    plan = common.candidate_plans(16, 768, product, H100.sms, dtype.itemsize)[0]
    size = backward.exchange_dtype(dtype).itemsize
    assert product.exchange_size == size
    name = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    # tf32: what backward.product assumes for fp32 under torch's default allow_tf32.
    row = gpu_static.step_estimate(plan, common.LSTM, name, "tf32", 768, "backward")
    streamed = 0 if plan.resident else 4 * plan.block_h * 768 * dtype.itemsize
    scales = plan.block_b * plan.programs_h * 4 if backward.exchange_scaled(dtype) else 0
    assert product.exchange_scaled == backward.exchange_scaled(dtype)
    assert row["l2_bytes_per_step"] == (plan.block_b * 4 * 768 * size + scales + streamed) * plan.programs
    assert row["est_step_us"] == round(common.modelled_step_us(plan, product, dtype.itemsize, 768), 2)
    wider = m.plan_step_us(plan, "lstm", "backward", dtype.itemsize, "fp16", 768, exchange_size=4)
    assert m.plan_step_us(plan, "lstm", "backward", dtype.itemsize, "fp16", 768, exchange_size=2) < wider


# ------------------------------------------------------------------ the planner


def resources(regs=128, spills=0, shared=16 * 1024, warps=4):
    return common.Resources(regs, spills, shared, warps)


@pytest.mark.parametrize("product", [forward.product(common.LSTM, torch.float16),
                                     backward.product(common.LSTM, torch.float16),
                                     forward.product(common.GRU, torch.bfloat16)])
@pytest.mark.parametrize("B,H", [(16, 768), (64, 256), (1, 2048)])
def test_planner_takes_the_lowest_modelled_plan_that_fits(product, B, H):
    """With stated resources (every third candidate spills, as a compile might report),
    choose_plan returns a fitting candidate of least modelled time (times within the
    model's resolution count as equal: the earliest of them in the candidates' order),
    whatever that order, and compiles nothing slower."""
    plans = common.candidate_plans(B, H, product, H100.sms)

    def step_us(plan):
        return common.modelled_step_us(plan, product, 2, H)

    def compiled(plan):
        index = plans.index(dataclasses.replace(plan, reason=""))
        return resources(spills=8 if index % 3 == 1 else 0, warps=plan.num_warps)

    fitting = [p for p in plans if not common.check_plan(p, compiled(p), H100)]
    best = min(step_us(p) for p in fitting)
    for order in (plans, plans[::-1]):
        seen = []
        chosen = common.choose_plan(order, lambda p: seen.append(p) or compiled(p), H100, step_us)
        near = [p for p in order if p in fitting and step_us(p) <= best + m.RESOLUTION_US]
        assert dataclasses.replace(chosen, reason="") == near[0]
        assert all(step_us(p) <= best + m.RESOLUTION_US for p in seen)
        assert "lowest modelled step time" in chosen.reason


def test_planner_keeps_the_rejected_reasons():
    product = forward.product(common.LSTM, torch.float16)
    plans = common.candidate_plans(16, 768, product, H100.sms)
    step_us = lambda plan: common.modelled_step_us(plan, product, 2, 768)   # noqa: E731
    fastest = min(plans, key=step_us)

    def compiled(plan):
        return resources(spills=64 if dataclasses.replace(plan, reason="") == fastest else 0,
                         warps=plan.num_warps)

    chosen = common.choose_plan(plans, compiled, H100, step_us)
    assert dataclasses.replace(chosen, reason="") != fastest and "64 B of register spills per thread" in chosen.reason


@pytest.mark.parametrize("B,H", [(64, 768), (64, 1024)])
def test_bptt_planner_splits_the_batch_where_the_model_says_it_is_faster(B, H):
    """At B = 64 the BPTT candidates include batch blocks of 32 and 16 (each program then
    reads the gate gradients of fewer rows per step); with every candidate fitting, the
    planner takes one of them because the model puts it below every unsplit plan."""
    product = backward.product(common.LSTM, torch.float16)
    plans = common.candidate_plans(B, H, product, H100.sms)

    def step_us(plan):
        return common.modelled_step_us(plan, product, 2, H)

    chosen = common.choose_plan(plans, lambda p: resources(warps=p.num_warps), H100, step_us)
    unsplit = min(step_us(p) for p in plans if p.programs_b == 1)
    assert chosen.programs_b > 1 and step_us(chosen) < unsplit - m.RESOLUTION_US
