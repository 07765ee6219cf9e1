"""fastrnn's modules under DistributedDataParallel: two CPU processes (gloo) train on halves
of a batch and end every step with the gradients and weights of one process on the whole."""
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fastrnn

WORLD, STEPS, BATCH, LENGTH, FEATURES, HIDDEN = 2, 3, 8, 6, 4, 5
DEADLINE_S = 180


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = fastrnn.LSTM(FEATURES, HIDDEN, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = fastrnn.GRU(2 * HIDDEN, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, x):
        return self.head(self.gru(self.lstm(x)[0])[0])


def make_model_and_data():
    torch.manual_seed(0)
    model = Tagger().double()
    x = torch.randn(BATCH, LENGTH, FEATURES, dtype=torch.float64)
    target = torch.randn(BATCH, LENGTH, 1, dtype=torch.float64)
    return model, x, target


def train(model, x, target):
    """Plain SGD steps; returns every step's gradients and the final parameters."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    grads = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), target).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        optimizer.step()
    return grads, [p.detach().clone() for p in model.parameters()]


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model, x, target = make_model_and_data()
        ddp = nn.parallel.DistributedDataParallel(model)
        shard = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        result = train(ddp, x[shard], target[shard])
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_gradients_match_single_process(tmp_path):
    context = mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)),
                                 nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
            if time.monotonic() > deadline:
                pytest.fail(f"DDP workers did not finish within {DEADLINE_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    expected_grads, expected_params = train(*make_model_and_data())
    for rank in range(WORLD):
        grads, params = torch.load(tmp_path / f"rank{rank}.pt")
        for step, (actual, expected) in enumerate(zip(grads, expected_grads)):
            for a, e in zip(actual, expected):
                torch.testing.assert_close(a, e, msg=lambda m: f"rank {rank} step {step}: {m}")
        for a, e in zip(params, expected_params):
            torch.testing.assert_close(a, e)
