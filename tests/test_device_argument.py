"""--device cuda without a usable CUDA device (issue 21, item 8): python -m fastrnn.check and
examples/char_lm.py say that no CUDA device is available (argparse's error, status 2),
instead of torch's "AssertionError: Torch not compiled with CUDA enabled"."""
import importlib.util
import os

import pytest
import torch

from fastrnn import check

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "char_lm.py")


def char_lm_parse_args():
    spec = importlib.util.spec_from_file_location("char_lm", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parse_args


@pytest.fixture
def cpu_only_torch(monkeypatch):
    """This machine as a CPU-only build of torch sees it (on a GPU machine too)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)


@pytest.mark.parametrize("parse_args", [check.parse_args, char_lm_parse_args()],
                         ids=["fastrnn.check", "char_lm"])
def test_cuda_without_a_device_is_a_clear_usage_error(parse_args, cpu_only_torch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--device", "cuda"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --device: no CUDA device is available: this torch is a CPU-only build" in err
    assert "use --device cpu" in err
    assert parse_args(["--device", "auto"]).device == torch.device("cpu")
    assert parse_args([]).device == torch.device("cpu")


def test_a_build_with_cuda_but_no_gpu_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with pytest.raises(Exception, match="torch sees no GPU"):
        check.device_argument("cuda:1")


def test_unknown_device_names_torch_s_message():
    with pytest.raises(Exception, match="Expected one of cpu, cuda"):
        check.device_argument("gpu")
