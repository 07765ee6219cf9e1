"""scripts/install.sh's choice of where torch comes from (issue 21, item 8): the package
registry first, PyTorch's CPU index only when it answers, so a machine that cannot reach it
does not wait through pip's retries. Run against a stub python that records every call."""
import os
import pathlib
import subprocess

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "install.sh"

STUB = """#!/usr/bin/env bash
echo "$*" >> "$STUB_LOG"
case "$*" in
  "-c import torch") exit 1 ;;                       # torch is missing
  *urlopen*) exit "$STUB_INDEX_RC" ;;                 # the reachability probe
  "-m pip install"*"torch==2.13.0+cpu"*)
    if [[ "$*" == *--extra-index-url* ]]; then exit 0; else exit "$STUB_REGISTRY_RC"; fi ;;
  *) exit 0 ;;                                        # everything else is present / succeeds
esac
"""


def run_install(tmp_path, registry_has_cpu_build: bool, index_answers: bool):
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log = tmp_path / "calls.log"
    env = dict(os.environ, PYTHON=str(stub), STUB_LOG=str(log),
               STUB_REGISTRY_RC="0" if registry_has_cpu_build else "1",
               STUB_INDEX_RC="0" if index_answers else "1")
    result = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    torch_calls = [line for line in log.read_text().splitlines()
                   if "torch" in line and "import torch" not in line]
    return torch_calls, result.stderr


def test_registry_first(tmp_path):
    calls, _ = run_install(tmp_path, registry_has_cpu_build=True, index_answers=False)
    assert len(calls) == 1 and "torch==2.13.0+cpu" in calls[0] and "index" not in calls[0]


def test_pytorch_index_only_when_it_answers(tmp_path):
    calls, _ = run_install(tmp_path, registry_has_cpu_build=False, index_answers=True)
    assert "urlopen" in calls[1] and "download.pytorch.org/whl/cpu/torch/" in calls[1]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in calls[2]
    assert "--retries 0" in calls[2] and len(calls) == 3


def test_unreachable_index_is_not_retried(tmp_path):
    calls, stderr = run_install(tmp_path, registry_has_cpu_build=False, index_answers=False)
    assert not any("--extra-index-url" in c for c in calls)
    assert calls[-1].endswith("torch==2.13.0")
    assert "does not answer" in stderr
