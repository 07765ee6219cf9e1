"""The static GPU check (benchmarks/gpu_static.py): its hazard rules catch what they are
for, and a real compile of a few planned launches is clean.

`make gpu-static` compiles the headline grid and a sample in CI, `make gpu-static-full`
the whole grid; here a handful of launches compile (Triton's own ptxas, no GPU), in a
subprocess without TRITON_INTERPRET (the interpreter replaces the kernels it would
compile).
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


# A persistent kernel as Triton 3.9 compiles it for sm_90 (the pattern of
# recurrent_forward_kernel's PTX, cut down): h0 read before the time loop; in the loop the
# weights (read only, never written), h_{t-1} from hbuf (written by every program each
# step), the store of h_t, then the grid barrier: CTA barrier, release add on the counter,
# a first acquire load and a poll loop of acquire loads, a CTA barrier; the final state
# stored after the loop.
PTX = """
.visible .entry k(
	.param .u64 .ptr .global .align 1 k_param_0,
	.param .u64 .ptr .global .align 1 k_param_1,
	.param .u64 .ptr .global .align 1 k_param_2,
	.param .u64 .ptr .global .align 1 k_param_3,
	.param .u32 k_param_4
)
.reqntid 128
{
	.reg .pred 	%p<8>;
	.reg .b32 	%r<40>;
	.reg .b64 	%rd<20>;
$L__func_begin0:
	ld.param.b64 	%rd1, [k_param_0];
	ld.param.b64 	%rd2, [k_param_1];
	ld.param.b64 	%rd3, [k_param_2];
	ld.param.b64 	%rd4, [k_param_3];
	ld.param.b32 	%r1, [k_param_4];
	mov.u32 	%r2, %tid.x;
	mad.wide.u32 	%rd5, %r2, 4, %rd4;
	ld.global.b32 	%r3, [%rd5];                  // h0 (this program's own slice)
	bra.uni 	$L__BB0_2;
$L__BB0_1:                              // %.backedge
	bar.sync 	0;
	setp.lt.s32 	%p1, %r20, %r1;
	@!%p1 bra 	$L__BB0_5;
$L__BB0_2:                              // =>This Loop Header: Depth=1
	mad.wide.u32 	%rd6, %r2, 2, %rd2;
	ld.global.v4.b32 	{ %r4, %r5, %r6, %r7 }, [ %rd6 + 0 ];     // W_hh (read only)
	mul.wide.u32 	%rd7, %r20, 64;
	add.s64 	%rd8, %rd1, %rd7;
	@%p2 ld.global.cg.v4.b32 { %r8, %r9, %r10, %r11 }, [ %rd8 + 0 ];   // h_{t-1}
	add.s64 	%rd9, %rd8, 64;
	@%p2 st.global.b32 	[ %rd9 + 0 ], { %r12 };    // h_t
	add.s32 	%r20, %r20, 1;
	bar.sync 	0;
	mad.wide.u32 	%rd10, %r21, 4, %rd3;
	@%p3 red.global.gpu.release.add.u32 [ %rd10 + 0 ], %r22;
	@%p3 ld.global.gpu.acquire.b32 %r23, [ %rd10 + 0 ];
	@%p3 st.shared::cta.b32 [ %r24 + 0 ], %r23;
	bar.sync 	0;
	setp.lt.s32 	%p4, %r23, %r25;
	@!%p4 bra 	$L__BB0_1;
$L__BB0_3:                              // %.lr.ph (the poll loop)
	bar.sync 	0;
	@%p3 ld.global.gpu.acquire.b32 %r26, [ %rd10 + 0 ];
	@%p3 st.shared::cta.b32 [ %r24 + 0 ], %r26;
	bar.sync 	0;
	ld.shared.b32 	%r23, [global_smem];
	setp.lt.s32 	%p5, %r23, %r25;
	@%p5 bra 	$L__BB0_3;
	bra.uni 	$L__BB0_1;
$L__BB0_5:
	st.global.b32 	[%rd5], %r12;                 // the final state
	ret;
$L__tmp9:
}
	.section	.debug_info
	{
	}
"""
H_LOAD = "@%p2 ld.global.cg.v4.b32"


def test_exchange_loads_found_by_the_loop_not_by_their_modifier():
    """h_{t-1} and the barrier counter's acquire loads are exchange loads (the loop writes
    hbuf and the counter); W_hh (never written) and h0 (before the loop) are not."""
    p = gpu_static.Ptx(PTX)
    found = {(op.op, tuple(p.buffers(op))) for op in p.exchange_loads()}
    assert found == {("ld.global.cg.v4.b32", ("k_param_0",)), ("ld.global.gpu.acquire.b32", ("k_param_2",))}
    p = gpu_static.Ptx(PTX.replace(H_LOAD, "@%p2 ld.global.v4.b32"))
    assert ("ld.global.v4.b32", ("k_param_0",)) in {(op.op, tuple(p.buffers(op))) for op in p.exchange_loads()}


# The SASS of the barrier as ptxas compiles it for sm_90: each acquire load is a strong
# GPU load followed by an invalidation of the SM's L1.
SASS = """
        /*2ae0*/                   REDG.E.ADD.STRONG.GPU desc[UR6][R108.64], R37 ;
        /*2b20*/                   LDG.E.STRONG.GPU R35, desc[UR6][R108.64] ;
        /*2b30*/                   CCTL.IVALL ;
        /*2bc0*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*2c60*/                   LDG.E.STRONG.GPU R33, desc[UR6][R108.64] ;
        /*2c70*/                   CCTL.IVALL ;
"""


def test_cache_rule_passes_the_kernels_pattern():
    assert gpu_static.cache_hazards(PTX) == []
    # read-only data may take the non-coherent path; a volatile or strong load is coherent
    assert gpu_static.cache_hazards(PTX.replace("ld.global.v4.b32", "ld.global.nc.v4.b32")) == []
    assert gpu_static.cache_hazards(PTX.replace(H_LOAD, "@%p2 ld.volatile.global.v4.b32")) == []
    assert gpu_static.cache_hazards(PTX.replace(H_LOAD, "@%p2 ld.relaxed.gpu.global.v4.b32")) == []


@pytest.mark.parametrize("load, reason", [
    ("ld.global.nc.v4.b32", "non-coherent"),
    ("ld.global.cg.nc.v4.b32", "non-coherent"),
    ("ldu.global.v4.b32", "non-coherent"),
    ("ld.const.v4.b32", "non-coherent"),
    ("ld.global.v4.b32", "may hit L1"),
    ("ld.global.ca.v4.b32", "may hit L1"),
    ("ld.relaxed.cta.global.v4.b32", "may hit L1"),
])
def test_cache_rule_fails_an_exchange_load_that_may_read_stale_data(load, reason):
    hazards = gpu_static.cache_hazards(PTX.replace(H_LOAD, "@%p2 " + load))
    assert len(hazards) == 1 and hazards[0].startswith("cache: " + load) and reason in hazards[0]
    assert "cache" in gpu_static.FATAL


def test_weak_exchange_loads_need_l1_invalidated_after_each_acquire():
    """Without .cg, a load after the acquire (the barrier rule checks the order) is fresh
    only if the SASS invalidates L1 there; not one invalidation per acquire is a hazard.
    Without a grid barrier the writers are the program's own threads: no hazard."""
    weak = PTX.replace(H_LOAD, "@%p2 ld.global.v4.b32")
    assert gpu_static.cache_hazards(weak, sass=SASS) == []
    assert gpu_static.cache_hazards(weak, sass=lambda: SASS) == []
    one_invalidation = SASS.replace("CCTL.IVALL", "NOP", 1)
    assert "CCTL.IVALL" in one_invalidation
    assert gpu_static.cache_hazards(weak, sass=one_invalidation)
    assert gpu_static.cache_hazards(weak, cooperative=False) == []
    nc = PTX.replace(H_LOAD, "@%p2 ld.global.nc.v4.b32")
    assert gpu_static.cache_hazards(nc, sass=SASS) and gpu_static.cache_hazards(nc, cooperative=False)


def test_cache_rule_reads_async_copies():
    """The streamed kernels copy h_{t-1} into shared memory with cp.async: .cg reads L2,
    .ca allocates in L1 (it needs the invalidation after the acquire)."""
    copy = "cp.async.{}.shared.global [ %r30 + 0 ], [ %rd8 + 0 ], 0x10, %r31"
    h_load = H_LOAD + " { %r8, %r9, %r10, %r11 }, [ %rd8 + 0 ]"
    assert gpu_static.cache_hazards(PTX.replace(h_load, copy.format("cg"))) == []
    hazards = gpu_static.cache_hazards(PTX.replace(h_load, copy.format("ca")))
    assert len(hazards) == 1 and hazards[0].startswith("cache: cp.async.ca.shared.global")
    assert gpu_static.cache_hazards(PTX.replace(h_load, copy.format("ca")), sass=SASS) == []


def test_cache_rule_fails_when_it_finds_no_exchange_load():
    """A kernel whose PTX changed form so much that no exchange load is found must not
    pass unseen: the rule would be blind."""
    no_loop = PTX.replace("@%p5 bra 	$L__BB0_3;", "").replace("@!%p1 bra 	$L__BB0_5;", "bra.uni $L__BB0_5;")
    no_loop = no_loop.replace("@!%p4 bra 	$L__BB0_1;", "bra.uni $L__BB0_5;")
    assert gpu_static.Ptx(no_loop).loops == []
    assert any(h.startswith("cache: no exchange load") for h in gpu_static.cache_hazards(no_loop))
    # Without a grid barrier (per-step launches) it is recorded, not fatal.
    unchecked = gpu_static.cache_hazards(no_loop, cooperative=False)
    assert unchecked and all(h.startswith("cache-unchecked:") for h in unchecked)
    assert "cache-unchecked" not in gpu_static.FATAL


def test_barrier_rule_passes_the_kernels_pattern():
    assert gpu_static.barrier_hazards(PTX, cooperative=True) == []
    assert gpu_static.barrier_hazards("", cooperative=False) == []
    # the same order with fences around relaxed atomics (older Triton versions)
    fenced = PTX.replace("@%p3 red.global.gpu.release.add.u32",
                         "fence.acq_rel.gpu;\n\t@%p3 red.global.gpu.relaxed.add.u32")
    assert gpu_static.barrier_hazards(fenced, cooperative=True) == []


def _drop_line(ptx: str, text: str, occurrence: int = 0) -> str:
    lines = ptx.split("\n")
    hits = [i for i, line in enumerate(lines) if text in line]
    del lines[hits[occurrence]]
    return "\n".join(lines)


@pytest.mark.parametrize("change, message", [
    (lambda p: p.replace("red.global.gpu.release", "red.global.gpu.relaxed"), "no release add"),
    (lambda p: p.replace("red.global.gpu.release", "red.global.cta.release"), "no release add"),
    # the CTA barrier between the h_t store and the release add
    (lambda p: _drop_line(p, "bar.sync", 1), "without a CTA barrier"),
    (lambda p: p.replace("ld.global.gpu.acquire", "ld.global.gpu.relaxed"), "no poll loop"),
    # the poll no longer loops
    (lambda p: p.replace("@%p5 bra 	$L__BB0_3;", ""), "no poll loop"),
    # no CTA barrier after the first poll nor on the back edge: the threads that did not
    # poll may load h_{t} before the poll saw every program arrive
    (lambda p: _drop_line(_drop_line(p, "bar.sync", 2), "bar.sync", 0),
     "without an acquire of the counter and a CTA barrier"),
    # the loads of the next step before the poll
    (lambda p: p.replace("@%p3 red.global.gpu.release.add.u32 [ %rd10 + 0 ], %r22;",
                         "@%p3 red.global.gpu.release.add.u32 [ %rd10 + 0 ], %r22;\n"
                         "\tld.global.cg.b32 %r33, [ %rd8 + 64 ];"),
     "without an acquire of the counter and a CTA barrier"),
])
def test_barrier_rule_fails_a_barrier_out_of_order(change, message):
    hazards = gpu_static.barrier_hazards(change(PTX), cooperative=True)
    assert any(h.startswith("barrier: ") and message in h for h in hazards), hazards


def test_replicated_warps_read_from_the_layout():
    from fastrnn.ops.recurrent import common
    layout = "#mma = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [2, 1], instrShape = [16, 8]}>"
    assert common.mma_replicated(layout, 16, 16)
    assert not common.mma_replicated(layout, 32, 16)


@pytest.mark.slow   # `make gpu-static` compiles the headline grid and a sample in CI
def test_planned_launches_compile_clean_for_hopper(tmp_path):
    """Forward and BPTT of LSTM and GRU at a resident and a streamed size: compiled as
    the runtime specialises them, none has a fatal hazard (the cache and barrier rules
    included), and the same PTX with its exchange loads made non-coherent or L1-cached
    fails the cache rule."""
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
        ptx = [c.ptx for c in compiler.cache.values() if "release" in c.ptx]
        open({str(tmp_path / 'ptx.json')!r}, "w").write(json.dumps(ptx))
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
    cooperative = json.loads((tmp_path / "ptx.json").read_text())
    assert cooperative
    for ptx in cooperative:
        assert gpu_static.barrier_hazards(ptx, cooperative=True) == []
        nc = ptx.replace("ld.global.cg.", "ld.global.nc.")
        if nc != ptx:
            assert any("non-coherent" in h for h in gpu_static.cache_hazards(nc))
        l1 = ptx.replace("ld.global.cg.", "ld.global.").replace("cp.async.cg.", "cp.async.ca.")
        assert any("may hit L1" in h for h in gpu_static.cache_hazards(l1))


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


# ------------------------------------------------------------------ CI: sample, hash, comparison


def _row(**changes):
    row = {"kernel": "recurrent", "cell": "lstm", "dtype": "fp16", "direction": "forward",
           "precision": "ieee", "lengths": True, "B": 16, "H": 768, "forced_mode": False,
           "mode": "streamed", "regs": 56, "compile_s": 1.5, "hazards": []}
    return dict(row, **changes)


def _table(rows, digest="0" * 64):
    return {"arch": 90, "triton": "3.9.0", "sources_sha256": digest, "seconds": 3, "rows": rows}


def test_ci_compiles_the_headline_grid_and_a_fixed_sample():
    grid = gpu_static.problems(quick=False)
    sample = [p for p in grid if gpu_static.in_ci_sample(p)]
    headline = [p for p in grid if p.mode is not None
                or (p.B in gpu_static.HEADLINE_BATCHES and p.H in gpu_static.HEADLINE_HIDDENS)]
    assert set(headline) <= set(sample)
    assert any(p.B == 16 and p.H == 768 and p.cell == "lstm" for p in headline)
    others = len(grid) - len(headline)
    assert others / 32 < len(sample) - len(headline) < others / 8
    # a function of the problem alone: the same sample on every run and machine
    assert [p for p in grid if gpu_static.in_ci_sample(p)] == sample


def test_sources_hash_follows_the_sources_and_the_triton_version(tmp_path, monkeypatch):
    for name in ("fastrnn/ops/recurrent/forward.py", "fastrnn/ops/softmax/triton.py",
                 "fastrnn/ops/sampling/triton.py", "benchmarks/gpu_static.py", "README.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"# {name}\n")
    digest = gpu_static.sources_hash(tmp_path)
    (tmp_path / "README.md").write_text("not a source of the tables\n")
    assert gpu_static.sources_hash(tmp_path) == digest
    (tmp_path / "fastrnn/ops/recurrent/forward.py").write_text("BLOCK = 2\n")
    changed = gpu_static.sources_hash(tmp_path)
    assert changed != digest
    (tmp_path / "fastrnn/ops/recurrent/common.py").write_text("")      # a new kernel source
    assert gpu_static.sources_hash(tmp_path) not in (digest, changed)
    monkeypatch.setattr(gpu_static.triton, "__version__", "0.0.0")
    assert gpu_static.sources_hash(tmp_path) != changed


def test_verify_compares_rows_with_the_committed_table_timings_aside(tmp_path):
    committed = _table([_row(), _row(H=1024, regs=64), _row(kernel="softmax", mode="forward max")])
    gpu_static.write_table(tmp_path, committed)
    assert "sources sha256 " + "0" * 64 in (tmp_path / "gpu_static_sm90.md").read_text()
    # the same rows compiled again, slower, and a subset of them: equal
    fresh, lines, differs = gpu_static.verify(_table([_row(compile_s=9.0), _row(H=1024, regs=64)]), tmp_path)
    assert fresh and not differs and "2 of 2 rows equal" in lines[0]
    # a changed field, and a configuration the committed table lacks
    fresh, lines, differs = gpu_static.verify(_table([_row(regs=57), _row(B=3)]), tmp_path)
    assert fresh and differs
    assert any("regs 56 -> 57" in line for line in lines)
    assert any("B=3" in line and "not in the committed table" in line for line in lines)
    # a planner that picks another mode for the same problem differs; a forced mode is a key
    assert gpu_static.verify(_table([_row(mode="persistent")]), tmp_path)[2]
    assert gpu_static.verify(_table([_row(forced_mode=True)]), tmp_path)[2]


def test_verify_calls_a_table_from_other_sources_stale(tmp_path):
    gpu_static.write_table(tmp_path, _table([_row()]))
    fresh, lines, differs = gpu_static.verify(_table([_row()], digest="1" * 64), tmp_path)
    assert not fresh and not differs and "0000000000000000" in lines[0]
    # no committed table, or one from before the hash (a bare list of rows)
    assert not gpu_static.verify(_table([_row()]), tmp_path / "none")[0]
    (tmp_path / "gpu_static_sm90.json").write_text(json.dumps([_row()]))
    assert not gpu_static.verify(_table([_row()]), tmp_path)[0]


def test_ci_run_writes_to_scratch_prints_a_summary_and_fails_on_stale_tables(tmp_path, monkeypatch, capsys):
    """`--ci` as make gpu-static runs it, with the compiles replaced by one row: the
    tables go to the scratch folder, the committed ones are only read; a few lines are
    printed; a committed table from other sources fails and names make gpu-static-full."""
    committed, scratch = tmp_path / "committed", tmp_path / "scratch"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(gpu_static, "RESULTS", committed)
    monkeypatch.setattr(gpu_static, "run", lambda arch, jobs, selection: [_row(compile_s=0.1)])
    gpu_static.write_table(committed, dict(_table([_row()], gpu_static.sources_hash())))
    before = (committed / "gpu_static_sm90.json").read_text()
    assert gpu_static.main(["--ci", "--arch", "90", "--out", str(scratch)]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) <= 4 and "1 of 1 rows equal the committed rows" in out
    assert json.loads((scratch / "gpu_static_sm90.json").read_text())["rows"] == [_row(compile_s=0.1)]
    assert (committed / "gpu_static_sm90.json").read_text() == before
    gpu_static.write_table(committed, _table([_row()], "f" * 64))
    assert gpu_static.main(["--ci", "--arch", "90", "--out", str(scratch)]) == 1
    assert "make gpu-static-full" in capsys.readouterr().err


@pytest.mark.parametrize("error, kind", [
    ("PassManager::run failed", "compile"),   # Triton 3.6's crash in the forward's loop
    ("fastrnn: no launch plan of the recurrent kernel fits this GPU: ...", "shared"),
])
def test_a_planning_failure_is_a_fatal_hazard_of_its_kind(monkeypatch, error, kind):
    def fails(*args, **kwargs):
        raise RuntimeError(error)
    monkeypatch.setattr(gpu_static.common, "plan_for", fails)
    compiler = type("Compiler", (), {"resources_of": None})()
    problem = gpu_static.Problem("lstm", "forward", "fp16", 16, 768, False, None, "ieee")
    row = gpu_static.check_problem(problem, compiler, gpu_static.common.SM90)
    assert [h.split(":")[0] for h in row["hazards"]] == [kind]
    assert gpu_static.fatal_hazards(row) == row["hazards"]
