"""The CPU recurrences' gate-math loops compile to vector code.

Each loop marked FASTRNN_SIMD in csrc/include/fastrnn/{lstm,gru,rnn}_cpu.h must be
vectorised in the AVX-512 and AVX2 clones (FASTRNN_CPU_CLONES), as GCC reports with
-fopt-info-vec-optimized on tests/cpp/gate_loops.cpp. A loop that stays scalar is correct but
slow, so no parity test notices it: a tanh written with a select once left every gate loop
scalar and the LSTM layer's forward 2.3x slower (T=64, B=32, I=64, H=256, fp32, one core of
an AVX-512 EPYC: 35.4 ms against 15.7 ms vectorised).
"""
import os
import platform
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INCLUDE = os.path.join(ROOT, "csrc", "include")
HEADERS = ("lstm_cpu.h", "gru_cpu.h", "rnn_cpu.h")
# The extension's flags (setup.py) that decide vectorisation.
FLAGS = ["-O3", "-fopenmp", "-fno-trapping-math"]

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None or platform.machine() != "x86_64",
    reason="needs g++ on x86-64 (the clones are x86-64 builds)")


def simd_loops(header):
    """Line numbers of the `for` right after each FASTRNN_SIMD in the header."""
    with open(os.path.join(INCLUDE, "fastrnn", header)) as f:
        lines = f.read().splitlines()
    return [i + 2 for i, line in enumerate(lines) if line.strip() == "FASTRNN_SIMD"]


def vectorized_lines(tmp_path):
    """{(header, line): set of vector widths in bytes} from GCC's vectorisation report."""
    out = subprocess.run(
        ["g++", *FLAGS, "-I", INCLUDE, "-c", os.path.join(ROOT, "tests", "cpp", "gate_loops.cpp"),
         "-o", str(tmp_path / "gate_loops.o"), "-fopt-info-vec-optimized"],
        capture_output=True, text=True, check=True)
    found = {}
    for m in re.finditer(r"fastrnn/(\w+\.h):(\d+):\d+: optimized: loop vectorized using (\d+) byte",
                         out.stderr):
        found.setdefault((m.group(1), int(m.group(2))), set()).add(int(m.group(3)))
    return found


def test_every_gate_loop_is_vectorized(tmp_path):
    found = vectorized_lines(tmp_path)
    missing = []
    for header in HEADERS:
        loops = simd_loops(header)
        assert loops, f"no FASTRNN_SIMD loop found in {header}"
        for start, end in zip(loops, loops[1:] + [10 ** 9]):
            # GCC names a loop by a line of its body: the first report at or after its `for`.
            widths = set().union(*[w for (h, line), w in found.items()
                                   if h == header and start <= line < end and line - start <= 3]
                                 or [set()])
            for width, clone in ((64, "AVX-512"), (32, "AVX2")):
                if width not in widths:
                    missing.append(f"{header}:{start} ({clone} clone)")
    assert not missing, "gate loops left scalar: " + ", ".join(missing)
