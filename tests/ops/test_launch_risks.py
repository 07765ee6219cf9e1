"""First-contact risks of the Triton launches (issue 22, part 3), shown on the CPU.

1. every Triton launch runs under its tensors' device (a recording stand-in for
   torch.cuda.device_of: on CPU tensors the real one is a no-op);
2. the grid barrier's abort cannot overflow its int32 counter, however many programs give up;
3. the planner plans exactly the variant that is launched: the Triton specialisation (GPU
   target, Triton's own binder) of the launched arguments equals that of the mock arguments
   the planner and the static check compile, also for views that are not 16-byte aligned;
4. CUDA's occupancy rules, against figures of the CUDA toolkit's occupancy calculator;
5. spills in bytes and the OutOfResources reason read from the exception;
6. lengths > T rejected under torch.compile (and BPTT never reads past the last step).
7. the CUDA extension's barrier never calls __trap() (its timeout path, error flag and
   every block leaving, is tests/cpp/test_cuda_kernels.cu's test_barrier_timeout, compiled
   by `make cpp-test` here and run where a GPU is present);
8. C++17: `make cpp-test` compiles every csrc/*.cpp as C++17 (CMakeLists.txt, extension_cxx17).
"""
import contextlib
import pathlib
import re
import types

import pytest
import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import make_backend
from triton.runtime.errors import OutOfResources
from triton.runtime.jit import JITFunction, KernelInterface, create_function_from_signature

import fastrnn
from fastrnn import backends
from fastrnn.ops.recurrent import backward, common, forward


def _rand(g, *shape, scale=0.3):
    return torch.randn(*shape, generator=g) * scale


def _lstm_inputs(T=3, B=3, I=5, H=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (_rand(g, T, B, I), _rand(g, B, H), _rand(g, B, H), _rand(g, 4 * H, I), _rand(g, 4 * H, H),
            _rand(g, 4 * H), _rand(g, 4 * H))


@contextlib.contextmanager
def recorded_launches(monkeypatch):
    """Every Triton launch in the block, as (kernel, args, kwargs, guarded device or None)."""
    launches, guards = [], []

    class device_of:   # torch.cuda.device_of, recording which tensor's device it selects
        def __init__(self, obj):
            self.device = obj.device

        def __enter__(self):
            guards.append(self.device)

        def __exit__(self, *exc):
            guards.pop()
            return False

    launch = KernelInterface.__getitem__

    def getitem(kernel, grid):
        def run(*args, **kwargs):
            launches.append((kernel, args, kwargs, guards[-1] if guards else None))
            return launch(kernel, grid)(*args, **kwargs)
        return run

    monkeypatch.setattr(torch.cuda, "device_of", device_of)
    monkeypatch.setattr(KernelInterface, "__getitem__", getitem)
    yield launches


def _tensor_devices(args):
    return {a.device for a in args if isinstance(a, torch.Tensor)}


# ------------------------------------------------------------------ 1. device guard


@pytest.mark.interpreter
def test_every_triton_launch_runs_under_its_tensors_device(monkeypatch):
    """LSTM forward and BPTT, softmax forward and backward, sampling: every launch happens
    inside torch.cuda.device_of(one of its tensors), and all its tensors are on that device
    (Triton launches on the current device and its current stream)."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _lstm_inputs()
    g = torch.Generator().manual_seed(1)
    logits = _rand(g, 2, 40, scale=2.0).requires_grad_()
    with recorded_launches(monkeypatch) as launches:
        y, _, _, ws = forward.run_forward(common.LSTM, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None)
        backward.lstm_backward(torch.ones_like(y), torch.zeros_like(h0), torch.zeros_like(c0), x, h0, c0,
                               w_ih, w_hh, y, ws, None)
        fastrnn.softmax(logits, 0.7, backend="triton").sum().backward()
        fastrnn.sample(logits.detach(), 0.9, top_k=5, top_p=0.9, seed=3, backend="triton")
    names = {kernel.fn.__name__ for kernel, *_ in launches}
    assert {"recurrent_forward_kernel", "_bptt_kernel", "_softmax_fwd_kernel", "_softmax_bwd_kernel",
            "_draw_kernel"} <= names, names
    for kernel, args, kwargs, guarded in launches:
        assert guarded is not None, f"{kernel.fn.__name__} launched outside a device guard"
        assert _tensor_devices(args) == {guarded}, kernel.fn.__name__


# ------------------------------------------------------------------ 2. barrier abort


@triton.jit
def _barrier_probe(counter_ptr, error_ptr, ok_ptr, target, MAX_POLLS: tl.constexpr, ABORT: tl.constexpr):
    ok = common.grid_barrier(counter_ptr, target, error_ptr, MAX_POLLS, ABORT)
    tl.store(ok_ptr + tl.program_id(0), ok.to(tl.int32))


@pytest.mark.interpreter
def test_barrier_abort_cannot_overflow_when_every_program_gives_up():
    """Eight programs that each time out and abort (a target none can reach): each abort
    raises the counter to ABORT (a max), so it ends at ABORT plus the arrivals after the
    first abort, far below 2^31. The abort by addition made it negative from the second
    abort on, and the programs still to come then waited out their own polls."""
    programs = 8
    counter = torch.zeros(1, dtype=torch.int32)
    error = torch.zeros(1, dtype=torch.int32)
    ok = torch.full((programs,), 7, dtype=torch.int32)
    _barrier_probe[(programs,)](counter, error, ok, 2**31 - 1, MAX_POLLS=3, ABORT=common.BARRIER_ABORT)
    assert counter.item() == common.BARRIER_ABORT + programs - 1
    assert error.item() == 1 and ok.tolist() == [0] * programs


@pytest.mark.interpreter
def test_barrier_after_an_abort_leaves_without_polling():
    """A program arriving after another aborted sees the counter at ABORT or more and leaves
    at once (with MAX_POLLS = 2^21 a poll loop would run for minutes here), without setting
    the error flag again."""
    counter = torch.tensor([common.BARRIER_ABORT + 5], dtype=torch.int32)
    error = torch.zeros(1, dtype=torch.int32)
    ok = torch.full((3,), 7, dtype=torch.int32)
    _barrier_probe[(3,)](counter, error, ok, 12, MAX_POLLS=common.MAX_BARRIER_POLLS,
                         ABORT=common.BARRIER_ABORT)
    assert counter.item() == common.BARRIER_ABORT + 8
    assert error.item() == 0 and ok.tolist() == [0, 0, 0]


def test_barrier_counts_stay_below_the_abort():
    """The arithmetic of BARRIER_ABORT's comment: arrivals alone never reach the abort
    value, and the abort plus every arrival stays in int32."""
    assert common.MAX_BARRIER_ARRIVALS < common.BARRIER_ABORT
    assert common.BARRIER_ABORT + common.MAX_BARRIER_ARRIVALS < 2**31
    for programs_h in (1, 2, 96, 132, 264):
        for T in (1, 5, common.MAX_BARRIER_ARRIVALS // programs_h + 3):
            for module in (forward, backward):
                plan = common.LaunchPlan(16, 8, 768, 1, programs_h, True, True, 4, 32)
                ranges = module._launch_ranges(T, plan, "meta")
                # forward: steps [begin, end); BPTT: iterations hi down to lo.
                steps = [end - begin if module is forward else begin - end + 1 for begin, end, _ in ranges]
                assert sum(steps) == (T if module is forward else T + 1)
                assert max(steps) * programs_h <= common.MAX_BARRIER_ARRIVALS


# ------------------------------------------------------------------ 3. the variant launched


def gpu_specialisation(kernel, args, kwargs):
    """Triton's own specialisation of a launch for sm_90 (argument types, divisibility by
    16, constants), as the JIT computes it on a GPU; kernel may be an interpreted one."""
    jit = JITFunction(kernel.fn, **kernel.kwargs) if hasattr(kernel, "kwargs") else kernel
    binder = create_function_from_signature(jit.signature, jit.params,
                                            make_backend(GPUTarget("cuda", 90, 32)))
    options = {k: v for k, v in kwargs.items() if k != "launch_cooperative_grid"}
    return binder(*args, **options)[1]


def _unaligned(t):
    """t's values in a view whose data pointer is 4 bytes past a 16-byte boundary."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype)
    view = flat[1:].view(t.shape)
    view.copy_(t)
    assert view.data_ptr() % 16 != 0
    return view


@pytest.mark.interpreter
@pytest.mark.parametrize("lengths", [False, True], ids=["no-lengths", "lengths"])
@pytest.mark.parametrize("views", [False, True], ids=["aligned", "unaligned-views"])
def test_planner_plans_the_variant_launched(monkeypatch, lengths, views):
    """The forward and BPTT launches specialise exactly as the mock arguments that the
    planner (runtime_resources) and the static check compile: the int32 counter in the
    lengths slot when there are none, and every tensor 16-byte aligned even when the
    caller passes views at an offset (h0[1] of a stacked state, a weight in a flat buffer)."""
    T, B, H = 3, 3, 20
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _lstm_inputs(T, B, 5, H)
    lens = torch.tensor([3, 1, 2]) if lengths else None
    grad_y = torch.ones(T, B, H)
    if views:
        h0, c0, w_hh, b_hh, grad_y = map(_unaligned, (h0, c0, w_hh, b_hh, grad_y))
        lens = _unaligned(lens) if lengths else None
    with recorded_launches(monkeypatch) as launches:
        y, _, _, ws = forward.run_forward(common.LSTM, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lens)
        backward.lstm_backward(grad_y, torch.zeros_like(h0), torch.zeros_like(c0), x, h0, c0, w_ih,
                               w_hh, y, ws, lens)
    mocks = {"recurrent_forward_kernel": forward.mock_args(torch.float32, 64, B, H, lengths),
             "_bptt_kernel": backward.mock_args(torch.float32, 64, B, H)}
    seen = set()
    for kernel, args, kwargs, _ in launches:
        name = kernel.fn.__name__
        seen.add(name)
        assert gpu_specialisation(kernel, args, kwargs) == gpu_specialisation(kernel, mocks[name], kwargs), name
    assert seen == set(mocks)


# ------------------------------------------------------------------ 4. occupancy

# Blocks per SM from the CUDA toolkit's occupancy calculator (cuda_occupancy.h, CUDA 13.0:
# cudaOccMaxActiveBlocksPerMultiprocessor with the H100 / A100 properties, default carveout),
# each also worked by hand: (registers per thread, warps, shared bytes) -> (sm_90, sm_80).
OCCUPANCY = [
    # 200 regs -> 6400 per warp; a sub-partition's 16384 hold 2 warps: 8 warps, 8 blocks
    # (the register file as one pool would give 65536 // 6400 = 10).
    ((200, 1, 0), (8, 8)),
    ((168, 4, 0), (3, 3)),          # 5376 per warp: 3 per sub-partition, 12 warps
    ((40, 2, 0), (24, 24)),         # 1280 per warp: 12 per sub-partition, 48 warps
    ((16, 1, 0), (32, 32)),         # at most 32 blocks per SM on sm_80 and sm_90
    ((255, 8, 0), (1, 1)),          # 8160 per warp, rounded up to 8192
    ((255, 16, 0), (0, 0)),         # 16 x 8192 registers: more than a block may have
    ((64, 32, 0), (1, 1)),          # 1024 threads
    ((0, 4, 0), (16, 16)),          # registers unknown: 64 warps per SM
    # 100000 + 1024 reserved -> 101120 (128-byte units): 233472 // 101120 = 2 (167936: 1).
    ((32, 4, 100_000), (2, 1)),
    # 45576 + 1024 = 46600 -> 46720: 4 (without the rounding 5; without the reserved KiB 5).
    ((32, 4, 45_576), (4, 3)),
    ((128, 4, 60_000), (3, 2)),
    ((96, 8, 20_000), (2, 2)),
    ((32, 4, 232_448), (1, 0)),     # the opt-in maximum per block of sm_90 exactly
    ((32, 4, 232_449), (0, 0)),
]


@pytest.mark.parametrize("usage,expected", OCCUPANCY, ids=[str(u) for u, _ in OCCUPANCY])
def test_occupancy_follows_cuda(usage, expected):
    regs, warps, shared = usage
    res = common.Resources(regs, 0, shared, warps)
    assert (common.programs_per_sm(res, common.SM90), common.programs_per_sm(res, common.SM80)) == expected


def test_blocks_per_sm_by_architecture():
    """cudaOccMaxBlocksPerMultiprocessor's table (cuda_occupancy.h, CUDA 13.0)."""
    expected = {75: 16, 80: 32, 86: 16, 87: 16, 89: 24, 90: 32, 100: 32, 101: 24, 103: 32,
                110: 24, 120: 24}
    assert {arch: common.max_blocks_per_sm(arch) for arch in expected} == expected


# ------------------------------------------------------------------ 5. spills, OutOfResources


class _FakeCompiled:
    """What kernel.warmup returns, with the driver's answers (Triton's load_binary)."""

    def __init__(self, regs, spill_words, shared, refuse=None):
        self.asm = {"ttgir": ""}
        self.metadata = types.SimpleNamespace(shared=shared)
        self._answers, self._refuse = (regs, spill_words), refuse

    def _init_handles(self):
        if self._refuse and self._refuse.name == "shared memory":
            raise self._refuse          # Triton raises this one before loading
        self.n_regs, self.n_spills = self._answers
        if self._refuse:
            raise self._refuse          # ... and "threads" after


def _fake_kernel(compiled):
    return types.SimpleNamespace(warmup=lambda *args, grid, **meta: compiled)


PLAN = common.LaunchPlan(16, 64, 64, 1, 12, False, False, 4, 64)


def test_spills_are_read_in_bytes():
    """Triton's n_spills is CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES / 4 (its driver.c, 3.6 and
    3.9): 6 words are 24 bytes of local memory per thread."""
    res = common.runtime_resources(_fake_kernel(_FakeCompiled(96, 6, 1024)), [], PLAN, {"num_warps": 4})
    assert (res.regs, res.spill_bytes, res.shared_bytes, res.out_of) == (96, 24, 1024, "")
    assert "24 B of register spills" in " ".join(common.check_plan(PLAN, res, common.SM90))


@pytest.mark.parametrize("refusal,regs", [(OutOfResources(256, 128, "threads"), 255),
                                          (OutOfResources(300_000, 232_448, "shared memory"), 0)])
def test_out_of_resources_reason_is_read_from_the_exception(refusal, regs):
    """A kernel the driver refuses for threads (too many registers for 4 warps) is rejected
    on that count, although its shared memory fits, and is never the per-step fallback."""
    compiled = _FakeCompiled(255, 0, 300_000 if refusal.name == "shared memory" else 1024, refusal)
    res = common.runtime_resources(_fake_kernel(compiled), [], PLAN, {"num_warps": 4})
    assert res.regs == regs and res.out_of.startswith(refusal.name)
    problems = " ".join(common.check_plan(PLAN, res, common.SM90))
    assert f"out of {refusal.name}: {refusal.required} required, limit {refusal.limit}" in problems
    with pytest.raises(RuntimeError, match=f"no launch plan.*out of {refusal.name}"):
        common.choose_plan([PLAN], lambda plan: res, common.SM90)


# ------------------------------------------------------------------ 6. lengths > T


def _layer_call(cell, backend):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _lstm_inputs(T=3, B=2, I=4, H=8)
    if cell == "lstm":
        return lambda lengths: fastrnn.functional.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                                             lengths=lengths, backend=backend)[0]
    gates = {"gru": 3, "rnn": 1}[cell]
    layer = getattr(fastrnn.functional, f"{cell}_layer")
    return lambda lengths: layer(x, h0, w_ih[:gates * 8], w_hh[:gates * 8], b_ih[:gates * 8],
                                 b_hh[:gates * 8], lengths=lengths, backend=backend)[0]


def _backends():
    found = ["reference"]
    if backends.interpreter_enabled() and backends.triton_importable():
        found.append("triton")
    if backends.ext_module() is not None:
        found.append("ext")
    return found


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_lengths_past_t_rejected_under_torch_compile(cell, backend):
    """fastrnn.functional reads lengths on the host, which torch.compile's tracing cannot:
    the layer op checks them at run time (fullgraph, so no graph break hides the call)."""
    torch._dynamo.reset()
    compiled = torch.compile(_layer_call(cell, backend), backend="aot_eager", fullgraph=True)
    compiled(torch.tensor([3, 2]))   # valid lengths run
    with pytest.raises(RuntimeError, match=r"fastrnn::\w+_layer: lengths must lie in \[1, T=3\], got 4 at batch row 1"):
        compiled(torch.tensor([3, 4]))
    with pytest.raises(RuntimeError, match="lengths must lie in"):
        compiled(torch.tensor([0, 2]))


@pytest.mark.interpreter
def test_bptt_treats_lengths_past_t_as_t():
    """On CUDA the op's error comes after the call: the BPTT launcher clamps lengths to T
    so that the kernel never reads the gate gradients of a step past T (it did for a
    length of T + 1)."""
    T, B, H = 3, 2, 8
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _lstm_inputs(T, B, 4, H)
    full = torch.tensor([T, T])
    y, _, _, ws = forward.run_forward(common.LSTM, x, h0, c0, w_ih, w_hh, b_ih, b_hh, full)
    g = torch.Generator().manual_seed(2)
    grads = [_rand(g, T, B, H), _rand(g, B, H), _rand(g, B, H)]
    expected = backward.lstm_backward(*grads, x, h0, c0, w_ih, w_hh, y, ws, full)
    got = backward.lstm_backward(*grads, x, h0, c0, w_ih, w_hh, y, ws, torch.tensor([T + 1, T]))
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


# ------------------------------------------------------------------ 7. the CUDA barrier


def test_cuda_extension_never_traps():
    """A barrier timeout in the extension's kernels sets an error flag and every block
    leaves (grid_barrier.cuh); __trap() would end the process's CUDA context instead."""
    root = pathlib.Path(__file__).resolve().parents[2] / "csrc"
    sources = [p for p in root.rglob("*") if p.suffix in (".cu", ".cuh", ".h", ".cpp")]
    assert any(p.name == "grid_barrier.cuh" for p in sources)
    trapping = [str(p) for p in sources if re.search(r"\b__trap\s*\(", p.read_text())]
    assert not trapping
