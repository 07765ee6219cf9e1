"""Compiles fastrnn's Triton kernels for NVIDIA targets without a GPU (Triton's own
ptxas), so CI on a CPU-only machine catches kernels that only the interpreter accepts.

Run as a script with TRITON_INTERPRET unset (the interpreter replaces @triton.jit
functions, which then cannot be compiled): `python tests/ops/compile_kernels.py ARCH`.
Prints one line per kernel and fails when a kernel does not compile or its grid barrier
lost its release/acquire atomics.
"""
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fastrnn.ops.recurrent.backward import _bptt_kernel
from fastrnn.ops.recurrent.forward import recurrent_forward_kernel
from fastrnn.ops.sampling import triton as sampling_triton
from fastrnn.ops.softmax import triton as softmax_triton

def forward_signature(dtype: str):
    types = {"xproj_ptr": dtype, "w_hh_ptr": dtype, "b_hh_ptr": dtype, "lengths_ptr": "*i64",
             "hbuf_ptr": dtype, "h_state_ptr": "*fp32", "c_state_ptr": "*fp32", "ws_ptr": "*fp32",
             "counter_ptr": "*i32", "error_ptr": "*i32"}
    types.update({name: "i32" for name in ("T", "B", "H", "t_begin", "t_end")})
    return types


def backward_signature(dtype: str):
    types = {"grad_y_ptr": dtype, "workspace_ptr": "*fp32", "y_ptr": dtype, "h0_ptr": dtype,
             "c0_ptr": dtype, "w_hh_ptr": dtype, "lengths_ptr": "*i64", "dg_hidden_ptr": "*fp32",
             "dg_input_ptr": "*fp32", "dh_state_ptr": "*fp32", "carry_ptr": "*fp32",
             "barrier_ptr": "*i32", "error_ptr": "*i32"}
    types.update({name: "i32" for name in ("t_hi", "t_lo", "T", "B", "H")})
    return types


def compile_kernel(kernel, signature, constexprs, arch: int, num_warps: int):
    signature = dict(signature, **{name: "constexpr" for name in constexprs})
    source = ASTSource(kernel, signature, constexprs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def main(arch: int):
    # Resident: W_hh tiles kept on chip (BLOCK_K = all of H); streamed: read in K chunks.
    tiles = {True: {"BLOCK_H": 16, "BLOCK_K": 256}, False: {"BLOCK_H": 64, "BLOCK_K": 64}}
    for dtype in ("*fp16", "*bf16", "*fp32"):
        for is_lstm in (True, False):
            for resident in (True, False):
                mode = f"{'lstm' if is_lstm else 'gru'} {dtype[1:]} {'resident' if resident else 'streamed'}"
                constexprs = {"IS_LSTM": is_lstm, "HAS_BIAS": True, "HAS_LENGTHS": True, "BLOCK_B": 16,
                              "RESIDENT": resident, "PROGRAMS_H": 16, "MAX_SPINS": 1 << 26,
                              **tiles[resident]}
                compiled = compile_kernel(recurrent_forward_kernel, forward_signature(dtype),
                                          constexprs, arch, num_warps=4)
                report(f"forward {mode} sm_{arch}", compiled)
                constexprs = {"IS_LSTM": is_lstm, "GATES": 4 if is_lstm else 3,
                              "WS_WIDTH": 5 if is_lstm else 4, "USE_BARRIER": True,
                              "DOT_PRECISION": "ieee" if dtype == "*fp32" else "tf32", "BLOCK_B": 16,
                              "RESIDENT": resident, "MAX_SPINS": 1 << 26, **tiles[resident]}
                compiled = compile_kernel(_bptt_kernel, backward_signature(dtype), constexprs, arch,
                                          num_warps=4)
                report(f"backward {mode} sm_{arch}", compiled)


def compile_row_kernels(arch: int):
    """Softmax and sampling: every launch their modules list in static_configs(), for
    bfloat16 logits (the interpreter has no bfloat16); benchmarks/gpu_static.py compiles
    all of them with run-time specialisation and reports their resources."""
    for module in (softmax_triton, sampling_triton):
        for config in module.static_configs():
            row = config["row"]
            if row["dtype"] != "bf16":
                continue
            signature = {name: "i32" if isinstance(value, int) else value
                         for name, value in config["args"].items()}
            compile_kernel(config["kernel"], signature, config["constexprs"], arch,
                           num_warps=config["num_warps"])
            print(f"{row['kernel']} {row['mode']} bf16 sm_{arch}: compiled")


def report(name, compiled):
    ptx = compiled.asm["ptx"]
    barrier = ("release" in ptx) and ("acquire" in ptx)
    print(f"{name}: compiled, barrier={'yes' if barrier else 'NO'}")
    if not barrier:
        raise SystemExit(f"{name}: the grid barrier's release/acquire atomics are missing")


if __name__ == "__main__":
    main(int(sys.argv[1]))
    compile_row_kernels(int(sys.argv[1]))
