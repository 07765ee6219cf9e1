"""ELMo-style bidirectional language model and scalar mix (Peters et al. 2018, "Deep
contextualized word representations", NAACL; arXiv:1802.05365).

A biLM is two language models over the same text: a forward LM predicts each token from
the tokens before it, a backward LM from the tokens after it. They share the token
embedding and the softmax, and nothing else (section 3.1). A downstream task reads all
their layers through a learned scalar mix (section 3.2, equation 1).
"""
import math
from typing import Dict, Iterator, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastrnn.stacked import StackedGRU, StackedLSTM

__all__ = ["BiLM", "ScalarMix", "tbptt_chunks", "LM_DIRECTIONS"]

LM_DIRECTIONS = ("forward", "backward")


class ScalarMix(nn.Module):
    """gamma * sum_j softmax(s)_j * layers[j] (Peters et al. 2018, equation 1).

    Parameters: ``scalars`` (num_layers,), zeros at first (an even mix), and ``gamma`` (a
    scalar), 1 at first.

    forward(layers): layers is a tensor (num_layers, *, D) (as BiLM.representations returns)
    or a sequence of num_layers tensors of one shape (*, D); returns (*, D) in the layers'
    dtype. Raises ValueError when the number of layers is not num_layers.
    """

    def __init__(self, num_layers: int, device=None, dtype=None):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be positive, got {num_layers}")
        self.num_layers = num_layers
        self.scalars = nn.Parameter(torch.zeros(num_layers, device=device, dtype=dtype))
        self.gamma = nn.Parameter(torch.ones((), device=device, dtype=dtype))

    def weights(self) -> Tensor:
        """softmax(s): (num_layers,), the share of each layer before gamma."""
        return torch.softmax(self.scalars, 0)

    def forward(self, layers: Union[Tensor, Sequence[Tensor]]) -> Tensor:
        if not isinstance(layers, Tensor):
            layers = torch.stack(list(layers))
        if layers.shape[0] != self.num_layers:
            raise ValueError(f"ScalarMix: expected {self.num_layers} layers, got {layers.shape[0]}")
        mixed = torch.tensordot(self.weights().to(layers.dtype), layers, dims=1)
        return self.gamma.to(layers.dtype) * mixed


def tbptt_chunks(streams: Tensor, bptt: int, direction: str) -> Iterator[Tensor]:
    """The windows of truncated backpropagation through time over `streams`, in the order the
    LM of `direction` reads them, for BiLM.loss.

    Args:
        streams: (N, B) token ids, time-major: column b is one contiguous text.
        bptt: the number of predictions per window.
        direction: "forward" yields the windows from the start of the streams, "backward"
            from their end, so that each LM's state carries from one window to the next.

    Yields:
        (bptt + 1, B) views streams[s:s + bptt + 1] for s = 0, bptt, 2 bptt, ... < N - 1 (the
        last may be shorter, at least 2 long). Consecutive windows overlap by one token:
        its target in one window is its input in the next.
    """
    if direction not in LM_DIRECTIONS:
        raise ValueError(f"direction must be one of {LM_DIRECTIONS}, got {direction!r}")
    starts = range(0, streams.shape[0] - 1, bptt)
    for s in (starts if direction == "forward" else reversed(starts)):
        yield streams[s:s + bptt + 1]


class BiLM(nn.Module):
    """A bidirectional language model: token embedding, a forward and a backward recurrent
    stack with independent weights, and one softmax layer shared by both (Peters et al.
    2018, section 3.1).

    ``BiLM(vocab_size, hidden_size, num_layers=2, proj_size=0, residual=True, cell="lstm",
    dropout=0.0, device=None, dtype=None)``

    The embedding has the stacks' layer width P = proj_size or hidden_size, so it joins the
    layer mix as layer 0 (ELMo's context-free token layer). Modules: ``embedding``
    (nn.Embedding(vocab_size, P)), ``forward_stack`` and ``backward_stack``
    (fastrnn.StackedLSTM / StackedGRU with direction "forward" / "backward", residual
    connections from layer 1 up), ``softmax`` (nn.Linear(P, vocab_size)).

    Args:
        cell: "lstm" or "gru" (proj_size needs "lstm").
        dropout: dropout on the token embeddings and on the top layer before the softmax,
            while training.
    """

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int = 2, proj_size: int = 0,
                 residual: bool = True, cell: str = "lstm", dropout: float = 0.0, device=None,
                 dtype=None):
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be 'lstm' or 'gru', got {cell!r}")
        if cell == "gru" and proj_size:
            raise ValueError("proj_size is only supported with cell='lstm'")
        options = dict(num_layers=num_layers, residual=residual, device=device, dtype=dtype)
        if cell == "lstm":
            options["proj_size"] = proj_size
        stack = StackedLSTM if cell == "lstm" else StackedGRU
        width = proj_size or hidden_size
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden_size, num_layers
        self.proj_size, self.cell, self.dropout = proj_size, cell, dropout
        self.embedding = nn.Embedding(vocab_size, width, device=device, dtype=dtype)
        self.forward_stack = stack(width, hidden_size, direction="forward", **options)
        self.backward_stack = stack(width, hidden_size, direction="backward", **options)
        self.softmax = nn.Linear(width, vocab_size, device=device, dtype=dtype)

    def _stack(self, direction: str):
        if direction not in LM_DIRECTIONS:
            raise ValueError(f"direction must be one of {LM_DIRECTIONS}, got {direction!r}")
        return self.forward_stack if direction == "forward" else self.backward_stack

    def forward(self, tokens: Tensor, direction: str = "forward", state=None):
        """One LM's next-token logits.

        Args:
            tokens: (T, B) token ids, time-major.
            direction: "forward": logits[t] scores token t + 1 from tokens[:t + 1] (and the
                state, which summarises the text before tokens[0]); "backward": logits[t]
                scores token t - 1 from tokens[t:] (and the state, which summarises the text
                after tokens[-1]).
            state: the stack's state (see StackedLSTM.forward), or None for zeros.

        Returns:
            logits (T, B, vocab_size), and the stack's final state.
        """
        stack = self._stack(direction)
        x = F.dropout(self.embedding(tokens), self.dropout, self.training)
        layers, state = stack(x, state)
        return self.softmax(F.dropout(layers[-1], self.dropout, self.training)), state

    def loss(self, chunk: Tensor, direction: str = "forward", state=None, reduction: str = "mean"):
        """One window of truncated BPTT: cross-entropy (nats per token) of the LM of
        `direction` predicting every token of `chunk` from its context in that direction.

        Args:
            chunk: (T + 1, B) token ids (from tbptt_chunks): the forward LM reads chunk[:-1]
                and predicts chunk[1:]; the backward LM reads chunk[1:] from the end and
                predicts chunk[:-1].
            state: the LM's state after the previous window (tbptt_chunks' order), or None.
                It is detached: gradients stop at the window's edge.
            reduction: as torch.nn.functional.cross_entropy's ("mean" or "sum").

        Returns:
            the loss (a scalar tensor), and the state for the next window.
        """
        if state is not None:
            state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        inputs, targets = (chunk[:-1], chunk[1:]) if direction == "forward" else (chunk[1:], chunk[:-1])
        logits, state = self(inputs, direction, state)
        loss = F.cross_entropy(logits.reshape(-1, self.vocab_size), targets.reshape(-1),
                               reduction=reduction)
        return loss, state

    @torch.no_grad()
    def perplexity(self, streams: Tensor, bptt: int = 256) -> Dict[str, float]:
        """exp(mean cross-entropy per token) of each LM over all of `streams` ((N, B) token
        ids; each LM reads every column in its direction, state carried across windows), with
        dropout off. Returns {"forward": ppl, "backward": ppl}."""
        training = self.training
        self.eval()
        result = {}
        for direction in LM_DIRECTIONS:
            state, total, count = None, 0.0, 0
            for chunk in tbptt_chunks(streams, bptt, direction):
                loss, state = self.loss(chunk, direction, state, reduction="sum")
                total += loss.item()
                count += chunk[1:].numel()
            result[direction] = math.exp(total / count)
        self.train(training)
        return result

    def representations(self, tokens: Tensor) -> Tensor:
        """Every layer's contextual representation of each token, for ScalarMix.

        Args:
            tokens: (T, B) token ids; both stacks start from zeros at the ends of tokens.

        Returns:
            (num_layers + 1, T, B, 2 P): layer 0 is the token embedding twice, [x; x] (as in
            ELMo); layer j is [forward layer j; backward layer j] at each position, the
            forward half reading tokens[:t + 1], the backward half tokens[t:].
        """
        x = self.embedding(tokens)
        forward_layers, _ = self.forward_stack(x)
        backward_layers, _ = self.backward_stack(x)
        token_layer = torch.cat([x, x], -1).unsqueeze(0)
        return torch.cat([token_layer, torch.cat([forward_layers, backward_layers], -1)])
