"""fastrnn.errors' deferred reports, without a GPU: the pending list's bookkeeping."""
import torch

from fastrnn import errors


class _Done:
    """Stands in for the torch.cuda.Event a deferred report waits on."""

    def __init__(self, finished: bool):
        self.finished = finished

    def query(self) -> bool:
        return self.finished

    def synchronize(self) -> None:
        self.finished = True


def test_a_finished_report_behind_an_unfinished_one_leaves_the_list(monkeypatch):
    # The H200 run of benchmarks.step_latency raised "Boolean value of Tensor ... is
    # ambiguous" here: removing the second entry compared it with the first by value.
    def ok(codes):
        return None

    waiting = errors._Pending(torch.zeros(2, dtype=torch.int64), _Done(False), ok, RuntimeError)
    finished = errors._Pending(torch.zeros(2, dtype=torch.int64), _Done(True), ok, RuntimeError)
    monkeypatch.setattr(errors, "_pending", [waiting, finished])
    errors._raise_completed(wait=False)
    assert errors._pending == [waiting]
    errors._raise_completed(wait=True)
    assert errors._pending == []
