"""The static GPU check (benchmarks/gpu_static.py): its hazard rules catch what they are
for, and a real compile of a few planned launches is clean.

`make gpu-static` runs the whole grid in CI; here a handful of launches compile (Triton's
own ptxas, no GPU), in a subprocess without TRITON_INTERPRET (the interpreter replaces
the kernels it would compile).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from benchmarks import gpu_static

WHILE_OK = """
    %r:2 = scf.while (%a = %x, %ok = %c) : (tensor<16x16xf32, #mma>, i1) -> (tensor<16x16xf32, #mma>) {
      scf.condition(%ok) %a : tensor<16x16xf32, #mma>
    } do {
    ^bb0(%a: tensor<16x16xf32, #mma>):
      tt.store %p, %a : tensor<16x16x!tt.ptr<f16>, #blocked>
      ttg.barrier all
      scf.yield %a, %ok : tensor<16x16xf32, #mma>, i1
    }
"""


def test_clean_time_loop_has_no_hazard():
    assert gpu_static.pipelining_hazards(WHILE_OK) == []


def test_time_loop_without_cta_barrier_is_a_hazard():
    hazards = gpu_static.pipelining_hazards(WHILE_OK.replace("ttg.barrier all", ""))
    assert len(hazards) == 1 and "no CTA barrier" in hazards[0]


def test_time_loop_found_past_braces_of_inline_layouts():
    """A loop-carried value reduced over a middle axis has an inline layout with braces
    (#ttg.slice<{...}>) in the loop header; the loop's body must still be read whole."""
    inline = WHILE_OK.replace("(tensor<16x16xf32, #mma>, i1) ->",
                              "(tensor<16x8xf32, #ttg.slice<{dim = 1, parent = #blocked3}>>, i1) ->")
    assert gpu_static.pipelining_hazards(inline) == []
    hazards = gpu_static.pipelining_hazards(inline.replace("ttg.barrier all", ""))
    assert len(hazards) == 1 and "no CTA barrier" in hazards[0]


def test_async_copies_carried_across_steps_are_a_hazard():
    carried = WHILE_OK.replace("(tensor<16x16xf32, #mma>, i1) ->",
                               "(tensor<16x16xf32, #mma>, !ttg.async.token, i1) ->")
    assert any("carries async copies" in h for h in gpu_static.pipelining_hazards(carried))


def test_a_for_loop_time_loop_is_a_hazard():
    assert gpu_static.pipelining_hazards("scf.for %t = %a to %b step %c { }")


def test_grid_barrier_needs_release_and_acquire():
    ptx = "red.global.gpu.release.add.u32 [%rd1], 1;\nld.global.gpu.acquire.b32 %r1, [%rd1];"
    assert gpu_static.barrier_hazards(ptx, cooperative=True) == []
    assert gpu_static.barrier_hazards(ptx.replace("release", "relaxed"), cooperative=True)
    assert gpu_static.barrier_hazards("", cooperative=False) == []


def test_replicated_warps_read_from_the_layout():
    from fastrnn.ops.recurrent import common
    layout = "#mma = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [2, 1], instrShape = [16, 8]}>"
    assert common.mma_replicated(layout, 16, 16)
    assert not common.mma_replicated(layout, 32, 16)


@pytest.mark.slow   # `make gpu-static` compiles the whole grid in CI
def test_planned_launches_compile_clean_for_hopper(tmp_path):
    """Forward and BPTT of LSTM and GRU at a resident and a streamed size: compiled as
    the runtime specialises them, none has a fatal hazard, the barrier atomics are there."""
    script = textwrap.dedent(f"""
        import json
        from benchmarks import gpu_static as g
        from fastrnn.ops.recurrent import common
        compiler = g.Compiler(90)
        rows = [g.check_problem(g.Problem(cell, direction, "fp16", 16, H, True, None, "ieee"),
                                compiler, common.SM90)
                for cell in ("lstm", "gru") for direction in ("forward", "backward")
                for H in (128, 1000)]
        open({str(tmp_path / 'rows.json')!r}, "w").write(json.dumps(rows))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            timeout=1500, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert len(rows) == 8
    for row in rows:
        fatal = [h for h in row["hazards"] if h.split(":")[0] in gpu_static.FATAL]
        assert not fatal, row
        assert row["co_resident"] and row["shared_bytes"] <= 232_448
        assert not row["replicated_warps"] and row["spill_bytes"] == 0, row
    assert {row["mode"] for row in rows} >= {"persistent", "streamed"}


def test_sm_balance_flags_the_busiest_sm_not_the_sm_count():
    """The step waits for the busiest SM: 48 programs of 16 units at H = 768 leave it
    2.8x the even share of 132 SMs; 96 programs of 8 do not; on the 108 SMs of sm_80,
    64 programs of 16 units at H = 1024 are within 2x of the even share (128 programs of
    8 would put two on some SMs: the same busiest load)."""
    from fastrnn.ops.recurrent import common

    def plan(units, H, programs_b=1):
        return common.LaunchPlan(16, units, 64, programs_b, -(-H // units), False, True, 4, 4 * units)
    busiest, even = gpu_static.sm_balance(plan(16, 768), 768, common.SM90)
    assert busiest == 16 and busiest > 2 * even
    busiest, even = gpu_static.sm_balance(plan(8, 768), 768, common.SM90)
    assert busiest == 8 and busiest <= 2 * even
    busiest, even = gpu_static.sm_balance(plan(16, 1024), 1024, common.SM80)
    assert busiest <= 2 * even
    busiest, even = gpu_static.sm_balance(plan(8, 1024), 1024, common.SM80)
    assert busiest == 16
