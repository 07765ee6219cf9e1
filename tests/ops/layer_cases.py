"""Helpers shared by the recurrent layer tests: one cell description, one parity check, and
torch's own layers and cells as oracles.

A layer is run through fastrnn.functional with torch.nn's weights and compared, output and
every gradient, with two oracles we did not write, both in float64: the torch.nn module
(nn.LSTM / nn.GRU / nn.RNN, one layer; variable lengths as a PackedSequence), and torch's
cell (nn.LSTMCell / nn.GRUCell / nn.RNNCell) stepped over each sequence's own steps.
fastrnn's reference.py is the readable spec, not the oracle.
"""
import dataclasses
import functools
from typing import Callable, List, Optional, Sequence

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fastrnn import functional
from fastrnn.testing import assert_matches_torch, assert_within_baseline, recurrent_reduction_length

TORCH_CELLS = {"LSTM": torch.nn.LSTMCell, "GRU": torch.nn.GRUCell, "RNN": torch.nn.RNNCell}
WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _layer_params(weights: Sequence[Optional[torch.Tensor]]) -> dict:
    """nn.LSTM/GRU/RNN parameter names of one layer for (w_ih, w_hh, b_ih, b_hh[, w_hr])."""
    names = [n + "_l0" for n in WEIGHT_NAMES] + ["weight_hr_l0"]
    return {n: w for n, w in zip(names, weights) if w is not None}


def _meta_module(cls, *args, **kwargs):
    """A torch module with no storage (and no RNG draw): functional_call supplies weights."""
    with torch.device("meta"):
        return cls(*args, **kwargs)


def torch_layer(kind: str, x, states, weights, lengths=None, nonlinearity="tanh") -> List:
    """torch.nn.LSTM / GRU / RNN (`kind`), one layer, on these tensors: [y, h_T(, c_T)].

    x (T, B, I); states [h0(, c0)] of (B, .) or None; weights (w_ih, w_hh, b_ih, b_hh[, w_hr]).
    With lengths the input runs as a PackedSequence and y is padded with zeros.
    """
    w_ih, w_hh, b_ih = weights[0], weights[1], weights[2]
    options = {"bias": b_ih is not None, "dtype": x.dtype}
    if kind == "LSTM" and len(weights) > 4 and weights[4] is not None:
        options["proj_size"] = weights[4].shape[0]
    if kind == "RNN":
        options["nonlinearity"] = nonlinearity
    hidden = weights[4].shape[1] if "proj_size" in options else w_hh.shape[1]
    module = _meta_module(getattr(torch.nn, kind), w_ih.shape[1], hidden, **options)
    hx = None if states[0] is None else tuple(s[None] for s in states)
    if hx is not None and kind != "LSTM":
        hx = hx[0]
    inp = x if lengths is None else pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
    y, final = torch.func.functional_call(module, _layer_params(weights), (inp, hx))
    if lengths is not None:
        y = pad_packed_sequence(y, total_length=x.shape[0])[0]
    final = final if kind == "LSTM" else (final,)
    return [y] + [h[0] for h in final]


def torch_cell_loop(kind: str, x, states, weights, lengths=None, nonlinearity="tanh") -> List:
    """torch.nn.LSTMCell / GRUCell / RNNCell stepped over time: [y, h_T(, c_T)].

    Each sequence runs alone over its own lengths[b] steps (all T without lengths); its
    later outputs are zero and its final state is the one after its last step.
    """
    T, B, I = x.shape
    H = weights[1].shape[1]
    options = {"bias": weights[2] is not None, "dtype": x.dtype}
    if kind == "RNN":
        options["nonlinearity"] = nonlinearity
    cell = _meta_module(TORCH_CELLS[kind], I, H, **options)
    params = {n: w for n, w in zip(WEIGHT_NAMES, weights[:4]) if w is not None}
    n_states = 2 if kind == "LSTM" else 1
    if states[0] is None:
        states = [x.new_zeros(B, H) for _ in range(n_states)]
    outputs, finals = [], []
    for b in range(B):
        steps = T if lengths is None else int(lengths[b])
        state = tuple(s[b:b + 1] for s in states)
        ys = []
        for t in range(steps):
            hx = state if kind == "LSTM" else state[0]
            new = torch.func.functional_call(cell, params, (x[t, b:b + 1], hx))
            state = tuple(new) if kind == "LSTM" else (new,)
            ys.append(state[0])
        outputs.append(torch.cat(ys + [x.new_zeros(T - steps, H)]))
        finals.append(state)
    y = torch.stack(outputs, dim=1)
    return [y] + [torch.cat([f[k] for f in finals]) for k in range(n_states)]


@dataclasses.dataclass(frozen=True)
class Cell:
    name: str
    module: Callable          # torch.nn.LSTM / GRU / RNN (or a partial of it)
    has_cell_state: bool
    gates: int

    def make(self, input_size, hidden, bias=True, dtype=torch.float32, device="cpu"):
        return self.module(input_size, hidden, bias=bias, dtype=dtype, device=device)

    def run_fastrnn(self, module, x, states, lengths=None, backend=None):
        """(output, *final states) from fastrnn.functional with `module`'s weights."""
        weights = [getattr(module, n, None) for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
        if self.has_cell_state:
            y, h, c = functional.lstm_layer(x, states[0], states[1], *weights, lengths=lengths,
                                            backend=backend)
            return y, h, c
        if isinstance(module, torch.nn.RNN):
            return functional.rnn_layer(x, states[0], *weights, nonlinearity=module.nonlinearity,
                                        lengths=lengths, backend=backend)
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

    def run_torch_cells(self, module, x, states):
        """(output, *final states) from torch's cell (nn.LSTMCell, ...) stepped over time
        with `module`'s weights."""
        weights = [getattr(module, n + "_l0", None) for n in WEIGHT_NAMES]
        return torch_cell_loop(type(module).__name__, x, states, weights,
                               nonlinearity=getattr(module, "nonlinearity", "tanh"))


LSTM = Cell("lstm", torch.nn.LSTM, True, 4)
GRU = Cell("gru", torch.nn.GRU, False, 3)
RNN_TANH = Cell("rnn_tanh", functools.partial(torch.nn.RNN, nonlinearity="tanh"), False, 1)
RNN_RELU = Cell("rnn_relu", functools.partial(torch.nn.RNN, nonlinearity="relu"), False, 1)


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


def with_grads(fn: Callable, cotangents: Optional[Sequence[torch.Tensor]] = None) -> Callable:
    """fn(*args) -> outputs, made to return the outputs followed by the gradients of
    sum(output * cotangent) (cotangents default to ones) with respect to every tensor
    argument; None arguments are skipped."""
    def outputs_and_grads(*args):
        outs = list(fn(*args))
        d_outs = [torch.ones_like(o) if cotangents is None else c.to(o) for c, o in
                  zip(cotangents or outs, outs)]
        grads = torch.autograd.grad(outs, [a for a in args if a is not None], d_outs)
        return [o.detach() for o in outs] + list(grads)
    return outputs_and_grads


def labels(cell: Cell, module, states):
    outs = ["output", "h_T"] + (["c_T"] if cell.has_cell_state else [])
    grads = ["d_x"] + [f"d_state{i}" for i, s in enumerate(states) if s is not None]
    return outs + grads + ["d_" + n for n, _ in module.named_parameters()]


def check_parity(cell: Cell, T, B, I, H, device, dtype=torch.float32, bias=True, with_states=True,
                 contiguous=True, backend: Optional[str] = "triton"):
    """fastrnn against torch's module and torch's cell stepped over time, both in float64:
    fp64 at assert_close's default tolerance, fp32 and 16-bit under the same-dtype rule
    (within twice the error of torch.nn's own computation in that dtype, plus the rounding
    floor of the layer's longest reduction)."""
    module = cell.make(I, H, bias=bias, dtype=dtype, device=device)
    x, states = random_inputs(cell, T, B, I, H, dtype, device, with_states, contiguous)
    reference_module = cell.make(I, H, bias=bias, dtype=torch.float64, device=device)
    reference_module.load_state_dict(module.state_dict())
    ours = outputs_and_grads(lambda m, xx, ss: cell.run_fastrnn(m, xx, ss, backend=backend),
                             module, x, states)
    x64, states64 = x.double(), [s.double() if s is not None else None for s in states]
    names = labels(cell, module, states)
    baseline = None
    reduction_length = recurrent_reduction_length(T, B, I, H, cell.gates)
    if dtype != torch.float64:   # torch.nn's own result in the same dtype
        baseline = outputs_and_grads(cell.run_torch, module, x, states)
    for oracle in (cell.run_torch, cell.run_torch_cells):
        expected = outputs_and_grads(oracle, reference_module, x64, states64)
        assert len(expected) == len(ours) == len(names)
        for i, (name, a, e) in enumerate(zip(names, ours, expected)):
            label = f"{name} vs {oracle.__name__}"
            if dtype == torch.float64:
                torch.testing.assert_close(a, e, msg=lambda m: f"{label}: {m}")
            else:
                assert_within_baseline(a, baseline[i], e, label, reduction_length=reduction_length)


def infer_kind(args: Sequence, output_names: Sequence[str]) -> Optional[str]:
    """"LSTM" or "GRU" from a layer's arguments (x, h0[, c0], w_ih, w_hh, ...) and outputs;
    None for an RNN, whose nonlinearity the arguments do not say."""
    if len(output_names) == 3:
        return "LSTM"
    h0, w_hh = args[1], args[3]
    return "GRU" if w_hh.shape[0] == 3 * h0.shape[1] else None


def assert_lengths_match_reference(run, reference, args, lengths, output_names, kind=None,
                                   nonlinearity="tanh"):
    """Outputs of run(*args, lengths=lengths) and gradients of every tensor in `args` (None
    allowed) against reference() on the same values, and against torch's own layer (a
    PackedSequence) and cell (stepped per sequence): each oracle in float64, under the
    same-dtype rule against the same oracle's run in the arguments' dtype (float64 results:
    assert_close's default).

    args: x, the states, then w_ih, w_hh, b_ih, b_hh (and w_hr for an LSTM with projection).
    kind: "LSTM", "GRU" or "RNN" for the torch oracles; inferred for LSTM and GRU. An RNN
    must name itself (with its nonlinearity), or only `reference` is compared.
    """
    kind = kind or infer_kind(args, output_names)
    n_states = len(output_names) - 1
    ours = run(*args, lengths=lengths)
    gen = torch.Generator().manual_seed(0)
    cotangents = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in ours]
    ours_grads = torch.autograd.grad(ours, [a for a in args if a is not None],
                                     [c.to(o) for c, o in zip(cotangents, ours)])
    oracles = {"reference": lambda *a: reference(*a, lengths=lengths)}
    if kind is not None:
        def layer(*a):
            return torch_layer(kind, a[0], a[1:1 + n_states], a[1 + n_states:], lengths, nonlinearity)

        def cells(*a):
            return torch_cell_loop(kind, a[0], a[1:1 + n_states], a[1 + n_states:], lengths, nonlinearity)
        oracles["torch layer"] = layer
        with_projection = len(args) > 1 + n_states + 4 and args[1 + n_states + 4] is not None
        if not with_projection:  # torch's LSTMCell has no projection
            oracles["torch cell"] = cells

    x, w_hh = args[0], args[1 + n_states + 1]
    T, B, I = x.shape
    reduction_length = max(I + w_hh.shape[1], w_hh.shape[0], T * B)
    for oracle_name, oracle in oracles.items():
        names = [f"{n} vs {oracle_name}" for n in output_names]
        names += [f"grad of argument {i} vs {oracle_name}" for i in range(len(ours_grads))]
        assert_matches_torch(list(ours) + list(ours_grads), with_grads(oracle, cotangents), args, names,
                             reduction_length)
