"""Helpers shared by the LSTM and GRU layer tests: one cell description, one parity check.

A layer is run through fastrnn.functional with torch.nn's weights and compared, output and
every gradient, with the same torch.nn module evaluated in float64.
"""
import dataclasses
from typing import Callable, Optional

import torch

from fastrnn import functional
from fastrnn.testing import assert_close_fp32, assert_within_baseline


@dataclasses.dataclass(frozen=True)
class Cell:
    name: str
    module: Callable          # torch.nn.LSTM / torch.nn.GRU
    has_cell_state: bool

    def make(self, input_size, hidden, bias=True, dtype=torch.float32, device="cpu"):
        return self.module(input_size, hidden, bias=bias, dtype=dtype, device=device)

    def run_fastrnn(self, module, x, states, lengths=None, backend=None):
        """(output, *final states) from fastrnn.functional with `module`'s weights."""
        weights = [getattr(module, n, None) for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
        if self.has_cell_state:
            y, h, c = functional.lstm_layer(x, states[0], states[1], *weights, lengths=lengths,
                                            backend=backend)
            return y, h, c
        y, h = functional.gru_layer(x, states[0], *weights, lengths=lengths, backend=backend)
        return y, h

    def run_torch(self, module, x, states):
        """(output, *final states) from the torch.nn module (one layer)."""
        if self.has_cell_state:
            hx = None if states[0] is None else (states[0][None], states[1][None])
            y, (h, c) = module(x, hx)
            return y, h[0], c[0]
        y, h = module(x, None if states[0] is None else states[0][None])
        return y, h[0]


LSTM = Cell("lstm", torch.nn.LSTM, True)
GRU = Cell("gru", torch.nn.GRU, False)


def random_inputs(cell: Cell, T, B, I, H, dtype, device, with_states=True, contiguous=True):
    if contiguous:
        x = torch.randn(T, B, I, dtype=dtype, device=device)
    else:
        x = torch.randn(B, T, I, dtype=dtype, device=device).transpose(0, 1)
    n_states = 2 if cell.has_cell_state else 1
    states = [torch.randn(B, H, dtype=dtype, device=device) if with_states else None
              for _ in range(n_states)]
    return x, states


def _leaves(module, x, states):
    return [x] + [s for s in states if s is not None] + list(module.parameters())


def outputs_and_grads(run, module, x, states, seed=1):
    """Run, then backprop sum(out * d_out) over the output and every final state, with
    fixed random cotangents, returning outputs followed by the gradients of all leaves."""
    x = x.detach().requires_grad_()
    states = [s.detach().requires_grad_() if s is not None else None for s in states]
    module.zero_grad(set_to_none=True)
    outs = run(module, x, states)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    cotangents = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in outs]
    loss = sum((o * d).sum() for o, d in zip(outs, cotangents))
    leaves = _leaves(module, x, states)
    grads = torch.autograd.grad(loss, leaves)
    return [o.detach() for o in outs] + list(grads)


def labels(cell: Cell, module, states):
    outs = ["output", "h_T"] + (["c_T"] if cell.has_cell_state else [])
    grads = ["d_x"] + [f"d_state{i}" for i, s in enumerate(states) if s is not None]
    return outs + grads + ["d_" + n for n, _ in module.named_parameters()]


def check_parity(cell: Cell, T, B, I, H, device, dtype=torch.float32, bias=True, with_states=True,
                 contiguous=True, backend: Optional[str] = "triton"):
    """fastrnn (fp32: against float64 torch.nn; 16-bit: the 2x-of-PyTorch's-own-error rule)."""
    module = cell.make(I, H, bias=bias, dtype=dtype, device=device)
    x, states = random_inputs(cell, T, B, I, H, dtype, device, with_states, contiguous)
    reference_module = cell.make(I, H, bias=bias, dtype=torch.float64, device=device)
    reference_module.load_state_dict(module.state_dict())
    ours = outputs_and_grads(lambda m, xx, ss: cell.run_fastrnn(m, xx, ss, backend=backend),
                             module, x, states)
    reference = outputs_and_grads(cell.run_torch, reference_module, x.double(),
                                  [s.double() if s is not None else None for s in states])
    names = labels(cell, module, states)
    if dtype == torch.float32:
        for name, a, e in zip(names, ours, reference):
            assert_close_fp32(a, e, name)
        return
    baseline = outputs_and_grads(cell.run_torch, module, x, states)
    for name, a, b, e in zip(names, ours, baseline, reference):
        assert_within_baseline(a, b, e, name)


def assert_lengths_match_reference(run, reference, args, lengths, output_names):
    """Outputs of run(*args, lengths=lengths) and gradients of every tensor in `args` (None
    allowed) against reference() on the same values in float64, at the fp32 tolerance."""
    ours = run(*args, lengths=lengths)
    expected = reference(*[a.double() if a is not None else None for a in args], lengths=lengths)
    cotangents = [torch.randn_like(o) for o in ours]
    leaves = [a for a in args if a is not None]
    grads = torch.autograd.grad(ours, leaves, cotangents)
    expected_grads = torch.autograd.grad(expected, leaves, [c.double() for c in cotangents])
    for name, a, e in zip(output_names, ours, expected):
        assert_close_fp32(a, e, name)
    for i, (a, e) in enumerate(zip(grads, expected_grads)):
        assert_close_fp32(a, e, f"grad of argument {i}")
