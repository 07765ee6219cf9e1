"""python -m fastrnn.check: it passes on this machine, and it fails when a backend is wrong.

A check that cannot fail is no check: the in-process tests break one backend at a time
(noise in an output, in one gradient only, a wrong kept set, an exception) and expect
exit status 1.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from fastrnn import backends, check
from fastrnn.ops.lstm import op as lstm_op
from fastrnn.ops.sampling import vectorized

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def available_checks():
    """(backend, op) pairs the command must have run on this machine: the same availability
    rule as the command's (in the subprocess without a GPU the command sets
    TRITON_INTERPRET=1 itself, as tests/conftest.py has set it here)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {(backend, name) for name, op in check.all_ops().items() for backend in backends.BACKENDS
            if op.why_unavailable(backend, device, torch.float32) is None}


def test_command_runs_every_available_backend_and_passes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", backends.ENV_VAR)}
    report = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, "-m", "fastrnn.check", "--quick", "--json", str(report)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "TF32:" in proc.stdout and proc.stdout.rstrip().endswith(": OK")
    rows = json.loads(report.read_text())["rows"]
    assert rows and all(r["verdict"] == "ok" for r in rows)
    ops = check.all_ops()
    printed = [line.split() for line in proc.stdout.splitlines()]
    assert len([p for p in printed if len(p) > 2 and p[0] in backends.BACKENDS and p[1] in ops]) == len(rows)
    assert available_checks() <= {(r["backend"], r["op"]) for r in rows}
    if hasattr(check.fastrnn, "RNN"):
        assert {"rnn_tanh", "rnn_relu"} <= {r["op"] for r in rows}
    if not torch.cuda.is_available():
        assert "not applicable on CPU" in proc.stdout


def _noisy_lstm_output(monkeypatch):
    original = lstm_op.reference_backend.forward

    def forward(*args):
        y, h_t, c_t, workspace = original(*args)
        return y + 1e-3 * torch.randn_like(y), h_t, c_t, workspace
    monkeypatch.setattr(lstm_op.reference_backend, "forward", staticmethod(forward))
    return ["--ops", "lstm"]


def _wrong_lstm_weight_gradient(monkeypatch):
    """Only d_weight_hh is off, by one part in a thousand: the outputs stay exact."""
    original = lstm_op.reference_backend.backward

    def backward(*args):
        grads = list(original(*args))
        grads[4] = grads[4] * 1.001
        return tuple(grads)
    monkeypatch.setattr(lstm_op.reference_backend, "backward", staticmethod(backward))
    return ["--ops", "lstm"]


def _wrong_kept_set(monkeypatch):
    original = vectorized.kept_mask

    def kept_mask(*args):
        mask, status = original(*args)
        mask = mask.clone()
        mask[:, 0] = ~mask[:, 0]
        return mask, status
    monkeypatch.setattr(vectorized, "kept_mask", kept_mask)
    return ["--ops", "sampling"]


def _raising_gru(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("deliberately broken")
    monkeypatch.setattr(check.fastrnn.functional, "gru_layer", fail)
    return ["--ops", "gru"]


@pytest.mark.parametrize("breakage", [_noisy_lstm_output, _wrong_lstm_weight_gradient, _wrong_kept_set,
                                      _raising_gru])
def test_a_broken_backend_makes_the_check_fail(monkeypatch, capsys, breakage):
    args = breakage(monkeypatch) + ["--backends", "reference", "--dtypes", "float32"]
    assert check.main(args) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out or "ERROR" in out
    assert out.rstrip().endswith(": FAIL")


def test_the_same_checks_pass_unbroken(capsys):
    assert check.main(["--ops", "lstm,gru,sampling", "--backends", "reference", "--dtypes", "float32"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(": OK")


def test_nothing_checked_is_a_failure(capsys):
    """A run that checks nothing (every requested backend unavailable) must not pass."""
    assert check.main(["--ops", "softmax", "--backends", "ext"]) == 1
    assert "nothing was checked" in capsys.readouterr().out


def test_the_rule_fails_what_it_should():
    """The same-dtype rule of every float row: exact results pass, 1% noise and NaN fail,
    and so does an error just past twice torch's own plus the floor."""
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(1000, dtype=torch.float64, generator=g)
    oracles = {"nn.LSTM": {"output": ref}}
    baseline = {"output": (ref + 1e-4 * torch.randn(1000, dtype=torch.float64, generator=g)).float()}
    exact = {"output": ref.float()}
    noisy = {"output": (ref + 0.01 * torch.randn(1000, dtype=torch.float64, generator=g)).float()}
    nan = {"output": torch.full_like(ref, float("nan")).float()}
    assert check.compare(exact, oracles, baseline, reduction_length=1000).passed
    assert not check.compare(noisy, oracles, baseline, reduction_length=1000).passed
    assert not check.compare(nan, oracles, baseline, reduction_length=1000).passed
    bound = check.compare(exact, oracles, baseline, reduction_length=1000).bound
    past = {"output": (ref + 1.01 * bound).float()}
    assert not check.compare(past, oracles, baseline, reduction_length=1000).passed


def test_tf32_on_and_off_at_the_headline_size_on_a_gpu_only():
    lstm = check.all_ops()["lstm"]
    headline, tiny = check.Case("headline", lstm.headline), check.Case("tiny", lstm.tiny)

    def fp32(on_gpu, case):
        return [s.label for s in lstm.settings(on_gpu, case) if s.dtype == torch.float32]
    assert fp32(True, headline) == ["off", "on"]
    assert fp32(True, tiny) == ["off"]
    assert fp32(False, tiny) == ["-"]
