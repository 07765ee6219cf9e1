"""Drop-in replacements for torch.nn.LSTM, torch.nn.GRU and torch.nn.RNN that run fastrnn's
fused layers.

The modules subclass torch.nn.RNNBase, not nn.LSTM / nn.GRU / nn.RNN: RNNBase gives the
same constructor checks, parameter names, registration order, initialisation, state_dict,
pickling and functional_call support, while torch.compile's Dynamo refuses to trace any
instance of nn.RNN / nn.GRU / nn.LSTM, subclasses included ("Dynamo does not support RNN,
GRU, or LSTM", torch/_dynamo/variables/builder.py, unless torch._dynamo.config.allow_rnn).
So isinstance(m, torch.nn.GRU) is False, and isinstance(m, torch.nn.RNNBase) is True: code
that finds recurrent layers by type should test nn.RNNBase, or m.mode ("LSTM", "GRU",
"RNN_TANH", "RNN_RELU"). Their repr names fastrnn (fastrnn.GRU(4, 5)), so print(model)
shows which layers were swapped.

Outputs are saved for backward (the kernels read h_t from them), as cuDNN's RNN does on
CUDA: modifying an output in place before backward raises a RuntimeError from torch
("modified by an inplace operation", or "is a view and is being modified inplace"),
never a wrong gradient; torch.nn's CPU GRU/LSTM/RNN allow it. Clone the output first.
(A bidirectional module's output is a concatenation nobody saves: changing it in place
is allowed, as in torch.nn.)

TorchScript: torch.jit.script cannot compile these modules (their forward picks a backend
and calls torch.library custom ops from Python) and raises a RuntimeError saying so; use
torch.compile or torch.jit.trace, which keep fastrnn's kernels, or script a torch.nn module
loaded with the same state_dict.

Each layer and direction is one call of fastrnn.functional.lstm_layer / gru_layer, which
picks the backend (fastrnn.backends). Variable-length batches (PackedSequence) run as a
padded time-major tensor plus per-sequence lengths, so the kernels stop each sequence at
its own end; the reverse direction reverses each sequence over its own valid steps.
"""
import functools
import warnings
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.autograd import forward_ad
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence

from fastrnn import backends, functional
from fastrnn.ops import layer_autocast

__all__ = ["LSTM", "GRU", "RNN", "replace_rnns"]


@functools.lru_cache(maxsize=None)  # asked on every short call
def _module_step():
    """The extension's short forward (fastrnn._C.module_step, csrc/module_step.cpp), or None
    when the extension was not built."""
    ext = backends.ext_module()
    return None if ext is None else ext.module_step


def _reverse_index(lengths: Tensor, steps: int) -> Tensor:
    """(T, B) source step of each output step when every sequence is reversed over its own
    first lengths[b] steps; padded steps map to themselves."""
    t = torch.arange(steps, device=lengths.device).unsqueeze(1)
    reversed_t = lengths.unsqueeze(0) - 1 - t
    return torch.where(reversed_t >= 0, reversed_t, t)


def _reverse_time(x: Tensor, index: Optional[Tensor]) -> Tensor:
    if index is None:
        return x.flip(0)
    return x.gather(0, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class _PackedLayout:
    """Where the rows of a PackedSequence's data sit in a padded (T, B) time-major tensor.

    Rows of packed data are ordered by time step, then by batch entry (sorted by length,
    longest first), so row r at step t belongs to batch entry r - (rows before step t).
    """

    def __init__(self, data: Tensor, batch_sizes: Tensor, name: str):
        _check_batch_sizes(data, batch_sizes, name)
        self.steps = batch_sizes.numel()
        self.batch = int(batch_sizes[0])
        step_of_row = torch.repeat_interleave(torch.arange(self.steps), batch_sizes)
        first_row_of_step = torch.cumsum(batch_sizes, 0) - batch_sizes
        entry_of_row = torch.arange(data.shape[0]) - torch.repeat_interleave(first_row_of_step,
                                                                             batch_sizes)
        self.rows = (step_of_row * self.batch + entry_of_row).to(data.device)
        entries = torch.arange(self.batch).unsqueeze(1)
        self.lengths = (batch_sizes.unsqueeze(0) > entries).sum(1).to(data.device)

    def to_padded(self, data: Tensor) -> Tensor:
        flat = data.new_zeros(self.steps * self.batch, data.shape[-1]).index_copy(0, self.rows, data)
        return flat.view(self.steps, self.batch, data.shape[-1])

    def to_packed(self, padded: Tensor) -> Tensor:
        return padded.reshape(self.steps * self.batch, padded.shape[-1]).index_select(0, self.rows)


def _check_batch_sizes(data: Tensor, batch_sizes: Tensor, name: str):
    """PackedSequence built by hand can be inconsistent; torch would fail deep inside ATen
    (or run on garbage). Each error has the type torch raises for the same mistake."""
    def fail(message, exc=RuntimeError):
        raise exc(f"{name}: invalid PackedSequence: {message}")

    # (PackedSequence itself refuses batch_sizes off the CPU.)
    if batch_sizes.dim() != 1 or batch_sizes.dtype.is_floating_point:
        fail(f"batch_sizes must be a 1-D int64 tensor, got {batch_sizes.dim()}-D {batch_sizes.dtype}",
             TypeError)
    if batch_sizes.dtype != torch.int64:
        fail(f"batch_sizes must be int64, got {batch_sizes.dtype}")
    if batch_sizes.numel() == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    if int(batch_sizes.min()) < 1 or bool((batch_sizes[1:] > batch_sizes[:-1]).any()):
        fail(f"batch_sizes must be positive and non-increasing, got {batch_sizes.tolist()}")
    if int(batch_sizes.sum()) != data.shape[0]:
        fail(f"data has {data.shape[0]} rows but batch_sizes sum to {int(batch_sizes.sum())}")


class HiddenStateError(TypeError, AttributeError, IndexError, RuntimeError):
    """hx of the wrong kind: not a tensor (GRU, RNN), or not a pair of tensors (LSTM).

    torch.nn fails on these while indexing hx, with a type that depends on the value
    (AttributeError, IndexError, RuntimeError or TypeError); this error is all of them, so
    code written to catch torch's still catches it, and its message says what is wrong.
    """


class _FusedRNNBase(nn.RNNBase):
    """Forward shared by LSTM and GRU. Subclasses give the hidden-state handling and
    `_run_direction` (one layer, one direction through fastrnn.functional)."""

    _rank_error = ""  # torch.nn's message for an input that is not 2-D or 3-D

    def _get_name(self) -> str:
        """repr's name: fastrnn.GRU(...), not torch's GRU(...)."""
        return f"fastrnn.{type(self).__name__}"

    def __prepare_scriptable__(self):
        """torch.jit.script calls this first: refuse with a clear error instead of a
        TorchScript compile error deep inside forward."""
        raise RuntimeError(
            f"fastrnn.{type(self).__name__} cannot be compiled by torch.jit.script (its forward "
            "calls fastrnn's kernels through Python). Use torch.compile or torch.jit.trace, "
            f"which keep the kernels, or script torch.nn.{type(self).__name__} loaded with this "
            "module's state_dict.")

    def flatten_parameters(self) -> None:
        """No-op: fastrnn's kernels read the weights where they are (nn.RNNBase would pack
        them into one cuDNN buffer)."""

    # --- hooks the subclasses define -------------------------------------------------
    def _as_state_tuple(self, hx) -> Tuple[Tensor, ...]:
        raise NotImplementedError

    def _from_state_tuple(self, state: Tuple[Tensor, ...]):
        """The hidden state in the form forward returns it (LSTM: a pair, GRU: a tensor)."""
        raise NotImplementedError

    def _run_direction(self, x: Tensor, state: Tuple[Tensor, ...], params: Sequence[Tensor],
                       lengths: Optional[Tensor]) -> Tuple[Tensor, Tuple[Tensor, ...]]:
        raise NotImplementedError

    def _check_hx_rank(self, hx, batched: bool) -> None:
        raise NotImplementedError

    def _zero_hidden(self, x: Tensor, batch: int):
        raise NotImplementedError

    # --- forward ---------------------------------------------------------------------
    def forward(self, input, hx=None):
        if not torch.jit.is_scripting():
            out = self._short_forward(input, hx)
            if out is not None:
                return out
        self._update_flat_weights()
        packed = isinstance(input, PackedSequence)
        if packed:
            x, batch_sizes, sorted_indices, unsorted_indices = input
            self.check_input(x, batch_sizes)
            layout = _PackedLayout(x, batch_sizes, type(self).__name__)
            batch, batched = layout.batch, True
        else:
            if input.dim() not in (2, 3):
                raise ValueError(self._rank_error.format(input.dim()))
            x, batch_sizes, sorted_indices, unsorted_indices = input, None, None, None
            batched = x.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not batched:
                x = x.unsqueeze(batch_dim)
            batch = x.size(batch_dim)
        if hx is None:
            hx = self._zero_hidden(x, batch)
        else:
            self._check_hx_rank(hx, batched)
            if not batched:
                hx = self._from_state_tuple(tuple(h.unsqueeze(1) for h in self._as_state_tuple(hx)))
        self.check_forward_args(x, hx, batch_sizes)
        state = self._as_state_tuple(self.permute_hidden(hx, sorted_indices))
        self._check_dtypes_and_devices(x, state)

        if packed:
            x_tm, lengths = layout.to_padded(x), layout.lengths
        else:
            x_tm, lengths = (x.transpose(0, 1) if self.batch_first else x), None
        y, final = self._run_layers(x_tm, state, lengths, layout.rows if packed else None)

        hidden = self._from_state_tuple(final)
        if packed:
            output = PackedSequence(layout.to_packed(y), batch_sizes, sorted_indices, unsorted_indices)
            return output, self.permute_hidden(hidden, unsorted_indices)
        if self.batch_first:
            y = y.transpose(0, 1)
        if not batched:
            y = y.squeeze(batch_dim)
            hidden = self._from_state_tuple(tuple(h.squeeze(1) for h in final))
        return y, hidden

    def _short_forward(self, input, hx):
        """forward's short way for the calls of streaming and decoding (many small calls, so
        the Python layers would cost more than the step): one C++ call (fastrnn._C.module_step,
        csrc/module_step.cpp) that checks the call and runs each layer on the extension's op,
        whose autograd formula is registered in C++ (csrc/autograd.cpp: training works too,
        and a call that needs no gradient never enters Python below this). It takes a batched
        CPU tensor, one direction, no inter-layer dropout, the extension chosen, and nothing
        that needs checking; here only what C++ cannot see is ruled out. Returns None whenever
        any of this does not hold: forward's general path then runs, raising torch.nn's errors.
        """
        if (torch._C._is_any_autocast_enabled() or torch.compiler.is_compiling()
                # torch.func transforms and forward-mode AD take the reference through the
                # layer ops, and Python modes (FlopCounterMode, a TorchFunctionMode) must see
                # the layer ops, which a call from C++ would hide from them.
                or torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0
                or torch._C._len_torch_dispatch_stack() > 0
                or torch._C._is_torch_function_mode_enabled()):
            return None
        module_step = _module_step()
        return None if module_step is None else module_step(self, input, hx)

    def _check_dtypes_and_devices(self, x: Tensor, state: Tuple[Tensor, ...]) -> None:
        """torch checks the devices inside ATen (same messages here) and never checks the
        dtype of hx; fastrnn says which tensor is wrong, with torch's exception types."""
        weight = self._flat_weights[0]
        if x.device != weight.device:
            raise RuntimeError("Input and parameter tensors are not at the same device, found input "
                               f"tensor at {x.device} and parameter tensor at {weight.device}")
        for h in state:
            if h.device != x.device:
                raise RuntimeError("Input and hidden tensors are not at the same device, found input "
                                   f"tensor at {x.device} and hidden tensor at {h.device}")
        if torch._C._is_any_autocast_enabled():
            return
        for h in state:
            if h.dtype != weight.dtype:
                # torch fails in its matmul or oneDNN with a RuntimeError not naming hx.
                raise RuntimeError(f"{type(self).__name__}: hx dtype ({h.dtype}) does not match "
                                   f"weight dtype ({weight.dtype}). Convert hx: hx.to({weight.dtype})")

    def _run_layers(self, x: Tensor, state: Tuple[Tensor, ...], lengths: Optional[Tensor],
                    packed_rows: Optional[Tensor]) -> Tuple[Tensor, Tuple[Tensor, ...]]:
        """All layers and directions on time-major x; returns the last layer's output and the
        stacked final states (one entry per state tensor, (layers * directions, B, .))."""
        weights: List[Tensor] = self._flat_weights
        dtype = layer_autocast.autocast_dtype(self.mode, x.device, x.dtype, weights[0].dtype)
        if dtype is not None:
            # Under autocast, compute in the dtype torch.nn's module would (its policy differs
            # per mode and device type); the fused layers take one dtype.
            x, state = x.to(dtype), tuple(h.to(dtype) for h in state)
            weights = [w.to(dtype) for w in weights]
        with layer_autocast.disabled(x.device):
            return self._run_stack(x, state, weights, lengths, packed_rows)

    def _run_stack(self, x, state, weights, lengths, packed_rows):
        directions = 2 if self.bidirectional else 1
        per_direction = len(weights) // (self.num_layers * directions)
        reverse_index = None
        if directions == 2 and lengths is not None:
            reverse_index = _reverse_index(lengths, x.shape[0])
        finals: List[List[Tensor]] = [[] for _ in state]
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                k = layer * directions + direction
                params = weights[k * per_direction:(k + 1) * per_direction]
                layer_state = tuple(h[k] for h in state)
                if direction == 0:
                    y, last = self._run_direction(x, layer_state, params, lengths)
                else:
                    y, last = self._run_direction(_reverse_time(x, reverse_index), layer_state,
                                                  params, lengths)
                    y = _reverse_time(y, reverse_index)
                outputs.append(y)
                for collected, h in zip(finals, last):
                    collected.append(h)
            x = outputs[0] if directions == 1 else torch.cat(outputs, -1)
            if layer < self.num_layers - 1 and self.dropout != 0 and self.training:
                x = self._inter_layer_dropout(x, packed_rows)
        return x, tuple(torch.stack(collected) for collected in finals)

    def _inter_layer_dropout(self, x: Tensor, packed_rows: Optional[Tensor]) -> Tensor:
        if packed_rows is None:
            return F.dropout(x, self.dropout, training=True)
        # torch drops out the packed rows: do the same, so one seed gives one mask.
        steps, batch, width = x.shape
        flat = x.reshape(steps * batch, width)
        rows = F.dropout(flat.index_select(0, packed_rows), self.dropout, training=True)
        return flat.new_zeros(flat.shape).index_copy(0, packed_rows, rows).view(steps, batch, width)


class LSTM(_FusedRNNBase):
    """Drop-in replacement for torch.nn.LSTM running fastrnn's fused LSTM layers.

    Same arguments, parameters (names, shapes, order, initialisation), state_dict, repr,
    inputs (3-D, batch_first, unbatched 2-D, PackedSequence), outputs and errors as
    nn.LSTM: ``LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None)``; forward
    returns ``output, (h_n, c_n)``.

    It subclasses torch.nn.RNNBase so that torch.compile can trace it, so
    ``isinstance(m, torch.nn.LSTM)`` is False (see this module's docstring).
    """

    _rank_error = "LSTM: Expected input to be 2D or 3D, got {}D instead"

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden

    def _as_state_tuple(self, hx) -> Tuple[Tensor, ...]:
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2
                and all(isinstance(h, Tensor) for h in hx)):
            raise HiddenStateError(f"LSTM: hx must be a tuple (h_0, c_0) of two tensors, got "
                            f"{type(hx).__name__}")
        return tuple(hx)

    def _from_state_tuple(self, state):
        return tuple(state)

    def _check_hx_rank(self, hx, batched: bool) -> None:
        h, c = self._as_state_tuple(hx)
        expected = 3 if batched else 2
        if h.dim() != expected or c.dim() != expected:
            kind = "batched 3-D" if batched else "unbatched 2-D"
            raise RuntimeError(f"For {kind} input, hx and cx should also be {expected}-D but got "
                               f"({h.dim()}-D, {c.dim()}-D) tensors")

    def _zero_hidden(self, x: Tensor, batch: int):
        layers = self.num_layers * (2 if self.bidirectional else 1)
        out = self.proj_size if self.proj_size > 0 else self.hidden_size
        return (x.new_zeros(layers, batch, out), x.new_zeros(layers, batch, self.hidden_size))

    def _run_direction(self, x, state, params, lengths):
        w_ih, w_hh = params[0], params[1]
        b_ih, b_hh = (params[2], params[3]) if self.bias else (None, None)
        w_hr = params[-1] if self.proj_size > 0 else None
        h0, c0 = state
        y, h, c = functional.lstm_layer(x.contiguous(), h0.contiguous(), c0.contiguous(), w_ih,
                                        w_hh, b_ih, b_hh, w_hr, lengths=lengths)
        return y, (h, c)


class GRU(_FusedRNNBase):
    """Drop-in replacement for torch.nn.GRU running fastrnn's fused GRU layers.

    Same arguments, parameters, state_dict, repr, inputs, outputs and errors as nn.GRU:
    ``GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, device=None, dtype=None)``; forward returns ``output, h_n``.

    It subclasses torch.nn.RNNBase so that torch.compile can trace it, so
    ``isinstance(m, torch.nn.GRU)`` is False (see this module's docstring).
    """

    _rank_error = "GRU: Expected input to be 2D or 3D, got {}D instead"

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)

    def _as_state_tuple(self, hx) -> Tuple[Tensor, ...]:
        if not isinstance(hx, Tensor):
            raise HiddenStateError(f"{type(self).__name__}: hx must be a Tensor, got "
                                   f"{type(hx).__name__}")
        return (hx,)

    def _from_state_tuple(self, state):
        return state[0]

    def _check_hx_rank(self, hx, batched: bool) -> None:
        (h,) = self._as_state_tuple(hx)
        if batched and h.dim() != 3:
            raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {h.dim()}-D tensor")
        if not batched and h.dim() != 2:
            raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got {h.dim()}-D tensor")

    def _zero_hidden(self, x: Tensor, batch: int):
        layers = self.num_layers * (2 if self.bidirectional else 1)
        return x.new_zeros(layers, batch, self.hidden_size)

    def _run_direction(self, x, state, params, lengths):
        w_ih, w_hh = params[0], params[1]
        b_ih, b_hh = (params[2], params[3]) if self.bias else (None, None)
        y, h = functional.gru_layer(x.contiguous(), state[0].contiguous(), w_ih, w_hh, b_ih, b_hh,
                                    lengths=lengths)
        return y, (h,)


class RNN(_FusedRNNBase):
    """Drop-in replacement for torch.nn.RNN (Elman RNN) running fastrnn's fused RNN layers.

    Same arguments, parameters, state_dict, repr, inputs, outputs and errors as nn.RNN:
    ``RNN(input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None)``, with
    nonlinearity "tanh" or "relu" (ValueError otherwise); forward returns ``output, h_n``.

    It subclasses torch.nn.RNNBase so that torch.compile can trace it, so
    ``isinstance(m, torch.nn.RNN)`` is False (see this module's docstring).
    """

    _rank_error = "RNN: Expected input to be 2D or 3D, got {}D tensor instead"

    def __init__(self, *args, **kwargs):
        # nn.RNN's own argument handling: nonlinearity is the fourth positional argument.
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if self.nonlinearity not in modes:
            raise ValueError(f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(modes[self.nonlinearity], *args, **kwargs)

    # One state tensor, as the GRU.
    _as_state_tuple = GRU._as_state_tuple
    _from_state_tuple = GRU._from_state_tuple
    _check_hx_rank = GRU._check_hx_rank
    _zero_hidden = GRU._zero_hidden

    def _run_direction(self, x, state, params, lengths):
        w_ih, w_hh = params[0], params[1]
        b_ih, b_hh = (params[2], params[3]) if self.bias else (None, None)
        y, h = functional.rnn_layer(x.contiguous(), state[0].contiguous(), w_ih, w_hh, b_ih, b_hh,
                                    nonlinearity=self.nonlinearity, lengths=lengths)
        return y, (h,)


_REPLACEMENTS = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN}


def _original_type(module: nn.Module) -> type:
    """The module's class, seeing through the subclass that parametrizations create."""
    if parametrize.is_parametrized(module):
        return type(module).__bases__[0]
    return type(module)


def _check_replaceable(rnn: nn.RNNBase) -> None:
    """ValueError unless every weight of `rnn` is a plain Parameter it owns: a parametrized
    weight or one a hook recomputes (the old torch.nn.utils.weight_norm) would not survive
    the swap."""
    name = _original_type(rnn).__name__
    if parametrize.is_parametrized(rnn):
        raise ValueError(f"replace_rnns: cannot replace a parametrized {name} "
                         "(e.g. weight_norm); remove the parametrization first")
    computed = [w for w in rnn._flat_weights_names if not isinstance(getattr(rnn, w), nn.Parameter)]
    if computed:
        raise ValueError(f"replace_rnns: cannot replace a {name} whose {', '.join(computed)} "
                         "is computed by a hook (e.g. torch.nn.utils.weight_norm); remove it first")


def _converted(rnn: nn.RNNBase) -> nn.RNNBase:
    """A fastrnn module holding the very Parameter objects of `rnn` (so optimizers that
    already hold them keep working), built on the meta device so no RNG is consumed."""
    options = dict(num_layers=rnn.num_layers, bias=rnn.bias, batch_first=rnn.batch_first,
                   dropout=rnn.dropout, bidirectional=rnn.bidirectional)
    if isinstance(rnn, nn.LSTM):
        options["proj_size"] = rnn.proj_size
    if isinstance(rnn, nn.RNN):
        options["nonlinearity"] = rnn.nonlinearity
    # The original module gave its construction warnings (e.g. dropout with one layer)
    # already: the swap repeats none of them.
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new = _REPLACEMENTS[_original_type(rnn)](rnn.input_size, rnn.hidden_size, **options)
    for name in rnn._flat_weights_names:
        setattr(new, name, getattr(rnn, name))
    new._init_flat_weights()
    # The hook dictionaries themselves, not copies: the handles the original's
    # register_*_hook returned still remove hooks from the new module.
    for name, value in vars(rnn).items():
        if "hook" in name:
            setattr(new, name, value)
    return new.train(rnn.training)


def replace_rnns(model: nn.Module) -> nn.Module:
    """Swap every torch.nn.LSTM / GRU / RNN inside `model` for fastrnn.LSTM / GRU / RNN,
    in place, keeping the parameters themselves (so their device, dtype, values and any
    optimizer state), and the training mode. A module reached through several parents is
    replaced by one module.

    Only modules whose type is exactly nn.LSTM, nn.GRU or nn.RNN are swapped: a subclass may
    override forward, which the replacement would not keep. Hooks registered on a
    replaced module (forward, pre-forward, backward, state_dict and load_state_dict hooks)
    move with it: the replacement holds the same hook dictionaries, so the handles
    registration returned still remove them. Returns `model`, or its replacement when
    `model` itself is an nn.LSTM / nn.GRU / nn.RNN.

    Raises:
        ValueError: an RNN's weights are parametrized (torch.nn.utils.parametrizations) or
            computed by a hook (torch.nn.utils.weight_norm). Every module is checked before
            any is swapped, so on error the model is unchanged.
    """
    if _original_type(model) in _REPLACEMENTS:
        _check_replaceable(model)
        return _converted(model)
    swaps = [(parent, name, child) for parent in model.modules()
             for name, child in parent.named_children() if _original_type(child) in _REPLACEMENTS]
    for _, _, child in swaps:
        _check_replaceable(child)
    replacements = {}
    for _, _, child in swaps:
        if id(child) not in replacements:
            replacements[id(child)] = _converted(child)
    for parent, name, child in swaps:
        setattr(parent, name, replacements[id(child)])
    return model
