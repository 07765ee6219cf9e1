"""The step (decode) path and start-up: `import fastrnn` stays free of torch._dynamo, and the
short-call fast paths keep parity with torch.nn."""
import subprocess
import sys

import torch

from fastrnn import backends


def test_import_does_not_load_dynamo():
    code = "import sys, fastrnn; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_assume_constant_result_matches_torch():
    """backends.assume_constant_result sets exactly what torch's decorator sets."""
    def ours():
        return 1

    def theirs():
        return 1

    before = set(vars(theirs))
    torch.compiler.assume_constant_result(theirs)
    backends.assume_constant_result(ours)
    assert {k: v for k, v in vars(theirs).items() if k not in before} == vars(ours)
