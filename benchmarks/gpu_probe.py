"""Where a recurrent step's time goes on a GPU: the per-step costs the step-time model must
get right, measured apart (for scripts/gpu_run.sh's `probe` stage).

    python -m benchmarks.gpu_probe [--out FILE] [--steps T]

The first H200 run (benchmarks/results/gpu_runs/2026-12-04_h200.md) put every forward plan
of the headline (B=16, H=768) at about 6.5 us per step whatever the cell and dtype, 2.5x
the model. This probe times, with CUDA events over T steps of one launch:

1. `exchange_probe_kernel`: the skeleton of a persistent step without the product or gate
   math: each of P programs reads h_{t-1} (B rows of H, as the product's operand is read),
   writes its slice of h_t, and meets the others at the grid barrier (common.step_barrier,
   the recurrent kernels' own). Variants: barrier only (no reads or writes), barrier and
   exchange, and the exchange with a CTA barrier only (P = 1, no grid barrier). P runs over
   1, 12, 24, 48, 96 and 132 programs (all co-resident: one small program per SM).
2. The forward op at the headline shape with each plan mode the planner can be forced
   into (persistent, streamed, per-step), fp16 and bf16, so each mode's step sits beside
   the skeleton's.

Output: a Markdown table (stdout, and --out), per row the microseconds per step.
"""
import argparse
import datetime
import os
import subprocess

import torch
import triton
import triton.language as tl

from benchmarks.timing import time_cuda_events
from fastrnn.ops.recurrent import common, forward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@triton.jit
def exchange_probe_kernel(hbuf_ptr, counter_ptr, error_ptr, T, B, H,
                          BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                          EXCHANGE: tl.constexpr, GRID_BARRIER: tl.constexpr,
                          MAX_POLLS: tl.constexpr, ABORT: tl.constexpr):
    """T steps of the persistent skeleton on hbuf (T + 1, B, H) fp32, hbuf[T] = h_0:
    with EXCHANGE, step t reads all of h_{t-1} = hbuf[(t - 1) mod (T + 1)] (row sums, as a
    product would read its operand) and writes h_t[b, j] = rowsum_b(h_{t-1}) / H + j for
    this program's units j; every step ends at the barrier (none after the last)."""
    pid_h = tl.program_id(1)
    rows = tl.arange(0, BLOCK_B)
    units = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < B
    tile_ok = row_ok[:, None] & (units < H)[None, :]
    t = 0
    ok = T > 0
    while ok:
        if EXCHANGE:
            prev = (t + T) % (T + 1)
            total = tl.zeros((BLOCK_B, ), dtype=tl.float32)
            for k0 in range(0, H, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                h = tl.load(hbuf_ptr + (prev * B + rows[:, None]) * H + ks[None, :],
                            mask=row_ok[:, None] & (ks < H)[None, :], other=0.0, cache_modifier=".cg")
                total += tl.sum(h, axis=1)
            h_new = total[:, None] / H + units[None, :].to(tl.float32)
            tl.store(hbuf_ptr + (t * B + rows[:, None]) * H + units[None, :], h_new, mask=tile_ok)
        t += 1
        ok = t < T
        if ok:
            ok = common.step_barrier(counter_ptr, t, error_ptr, GRID_BARRIER, MAX_POLLS, ABORT)


def exchange_reference(h0: torch.Tensor, T: int) -> torch.Tensor:
    """What exchange_probe_kernel writes to hbuf[:T] with EXCHANGE, in h0's dtype."""
    B, H = h0.shape
    out, h = [], h0
    units = torch.arange(H, dtype=h0.dtype, device=h0.device)
    for _ in range(T):
        h = h.sum(1, keepdim=True) / H + units[None, :]
        out.append(h)
    return torch.stack(out)


def run_exchange_probe(T: int, B: int, H: int, programs: int, exchange: bool, grid_barrier: bool,
                       device, block_k: int = 64) -> torch.Tensor:
    """One launch of exchange_probe_kernel, reading h_{t-1} in chunks of block_k; returns
    hbuf. Raises RuntimeError when the barrier timed out (its error flag)."""
    block_h = triton.cdiv(H, programs)
    hbuf = torch.zeros(T + 1, B, H, device=device)
    hbuf[T] = torch.randn(B, H, generator=torch.Generator().manual_seed(0)).to(device)
    counter = torch.zeros(4, dtype=torch.int32, device=device)
    error = torch.zeros(1, dtype=torch.int32, device=device)
    options = {"launch_cooperative_grid": True} if grid_barrier and device.type == "cuda" else {}
    exchange_probe_kernel[(1, programs)](
        hbuf, counter, error, T, B, H, BLOCK_B=triton.next_power_of_2(B),
        BLOCK_H=triton.next_power_of_2(block_h), BLOCK_K=block_k, EXCHANGE=exchange,
        GRID_BARRIER=grid_barrier, MAX_POLLS=common.MAX_BARRIER_POLLS, ABORT=common.BARRIER_ABORT,
        num_warps=4, num_stages=1, **options)
    if int(error.item()) != 0:
        raise RuntimeError(f"exchange probe: the grid barrier of {programs} programs timed out")
    return hbuf


def _time_us(fn) -> float:
    """Median of 20 CUDA-event timings of fn() (benchmarks.timing), in microseconds."""
    return time_cuda_events(fn, warmup=2, reps=20)[0] * 1e3


def skeleton_rows(T: int, B: int = 16, H: int = 768) -> list:
    device = torch.device("cuda")
    rows = []
    for programs in (1, 12, 24, 48, 96, 132):
        # H split over `programs` programs; below 132 each program owns a wider slice.
        for exchange in (False, True):
            grid = programs > 1
            if not grid and not exchange:
                continue
            us = _time_us(lambda: run_exchange_probe(T, B, H, programs, exchange, grid, device))
            what = ("barrier and exchange" if exchange else "barrier only") if grid else "exchange, CTA barrier"
            rows.append((f"skeleton: {what}, {programs} programs", f"{us / T:.2f}"))
    # What the exchange costs at the headline's 96 programs: the chunk count of the read
    # (each chunk's load waits on L2 before the next issues?), and without the grid
    # barrier (programs race: a timing, not a recurrence).
    for block_k in (256, 1024):
        us = _time_us(lambda: run_exchange_probe(T, B, H, 96, True, True, device, block_k))
        rows.append((f"skeleton: barrier and exchange in chunks of {block_k}, 96 programs", f"{us / T:.2f}"))
    us = _time_us(lambda: run_exchange_probe(T, B, H, 96, True, False, device))
    rows.append(("skeleton: exchange without the grid barrier (racy), 96 programs", f"{us / T:.2f}"))
    return rows


def forward_rows(T: int, B: int = 16, H: int = 768, I: int = 768) -> list:
    device = torch.device("cuda")
    rows = []
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16):
        def t(*shape):
            return (torch.randn(*shape, generator=g) * H ** -0.5).to(device, dtype)
        x, h0, c0 = t(T, B, I), t(B, H), t(B, H)
        w_ih, w_hh, b_ih, b_hh = t(4 * H, I), t(4 * H, H), t(4 * H), t(4 * H)
        for mode, flags in (("planner's choice", {}), ("streamed", {"force_streamed": True}),
                            ("per-step", {"force_per_step": True})):
            def run():
                forward.run_forward(common.LSTM, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, **flags)
            us = _time_us(run)
            plan = forward._plan(common.LSTM, x, H, True, False, flags.get("force_per_step", False),
                                 flags.get("force_streamed", False))
            rows.append((f"LSTM forward {str(dtype)[6:]}, {mode}: {plan.mode}, {plan.programs} programs, "
                         f"{plan.num_warps} warps", f"{us / T:.2f}"))
    return rows


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1024)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_probe: needs a CUDA GPU")
    commit = os.environ.get("FASTRNN_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [f"# Per-step costs on {torch.cuda.get_device_name()}", "",
             f"- torch {torch.__version__}, Triton {triton.__version__}, commit {commit}, "
             f"{datetime.date.today().isoformat()}; B=16, H=768, T={args.steps}, "
             "median of 20 CUDA-event timings of one launch (the skeleton) or one call (the forward)",
             "", "| what | us per step |", "|---|---:|"]
    for label, us in skeleton_rows(args.steps) + forward_rows(args.steps):
        lines.append(f"| {label} | {us} |")
        print(lines[-1], flush=True)
    report = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    print(report)
    return report


if __name__ == "__main__":
    main()
