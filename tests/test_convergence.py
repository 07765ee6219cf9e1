"""Training with fastrnn's modules follows training with torch.nn's: a small sequence model
trained from one seed has the same loss at every step, up to float32 rounding."""
import pytest
import torch
from torch import nn

import fastrnn
from fastrnn import testing

VOCAB, EMBED, HIDDEN, STEPS, BATCH, LENGTH, DELAY = 8, 8, 16, 30, 16, 12, 2


class DelayedCopy(nn.Module):
    """Predicts the token seen DELAY steps earlier: needs memory, so the recurrence matters."""

    def __init__(self, rnn_cls):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMBED)
        self.rnn = rnn_cls(EMBED, HIDDEN, num_layers=2, batch_first=True)
        self.head = nn.Linear(HIDDEN, VOCAB)

    def forward(self, tokens):
        return self.head(self.rnn(self.embed(tokens))[0])


def train_losses(rnn_cls, dtype, use_fastrnn):
    torch.manual_seed(0)
    model = DelayedCopy(rnn_cls).to(dtype)
    if use_fastrnn:
        fastrnn.replace_rnns(model)
    tokens = torch.randint(VOCAB, (BATCH, LENGTH))
    targets = torch.roll(tokens, DELAY, dims=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        logits = model(tokens)[:, DELAY:]
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets[:, DELAY:].reshape(-1))
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses)


@pytest.mark.parametrize("rnn_cls", [nn.LSTM, nn.GRU], ids=["LSTM", "GRU"])
def test_losses_follow_torch_at_every_step(rnn_cls):
    exact = train_losses(rnn_cls, torch.float64, use_fastrnn=False)
    torch_fp32 = train_losses(rnn_cls, torch.float32, use_fastrnn=False)
    ours_fp32 = train_losses(rnn_cls, torch.float32, use_fastrnn=True)
    ours_fp64 = train_losses(rnn_cls, torch.float64, use_fastrnn=True)
    assert exact[-1] < 0.5 * exact[0], "the task must actually be learned"
    torch.testing.assert_close(ours_fp64, exact)
    # fp32: our deviation from the fp64 run at most twice torch's own fp32 deviation.
    testing.assert_within_baseline(ours_fp32, torch_fp32, exact, name="fp32 losses")
