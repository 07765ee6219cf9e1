"""Stacked recurrent modules that return every layer's output: the encoder of an ELMo-style
bidirectional language model (Peters et al. 2018, "Deep contextualized word representations").

torch.nn.LSTM (and fastrnn.LSTM) return only the last layer's output, and with
``bidirectional=True`` each layer reads the concatenation of both directions of the layer
below. An ELMo biLM needs neither: it runs two *independent* stacks, one left to right
and one right to left, each layer reading only its own direction's layer below, with a
residual connection between layers, and its downstream mix reads every layer.

Each layer is a single-layer fastrnn.LSTM / fastrnn.GRU, so it runs the same fused kernels
(Triton on CUDA, the C++ extension on CPU), backend choice, checks and autocast policy as
the drop-in modules, and traces under torch.compile.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from fastrnn.nn import GRU, LSTM

__all__ = ["StackedLSTM", "StackedGRU", "DIRECTIONS"]

# "both" is two independent stacks (an ELMo biLM's encoder), not nn.LSTM's bidirectional.
DIRECTIONS = ("forward", "backward", "both")


class _Stacked(nn.Module):
    """Layers and forward shared by StackedLSTM and StackedGRU."""

    _layer_class: type = nn.Module  # fastrnn.LSTM or fastrnn.GRU

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, residual: bool = False, direction: str = "forward",
                 device=None, dtype=None, **layer_options):
        super().__init__()
        if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.residual = bias, batch_first, residual
        self.direction = direction
        proj_size = layer_options.get("proj_size", 0)
        self.layer_output_size = proj_size if proj_size > 0 else hidden_size

        def stack() -> nn.ModuleList:
            sizes = [input_size] + [self.layer_output_size] * (num_layers - 1)
            return nn.ModuleList(self._layer_class(size, hidden_size, bias=bias, device=device,
                                                   dtype=dtype, **layer_options) for size in sizes)

        self.forward_layers = stack() if direction in ("forward", "both") else None
        self.backward_layers = stack() if direction in ("backward", "both") else None

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}, direction={self.direction!r}, residual={self.residual}"

    @property
    def num_directions(self) -> int:
        return 2 if self.direction == "both" else 1

    @property
    def output_size(self) -> int:
        """Width of each layer's output: the layer width, times 2 for direction "both"."""
        return self.layer_output_size * self.num_directions

    def _stacks(self) -> List[Tuple[nn.ModuleList, bool]]:
        """(layers, reversed in time) for each direction, in output order."""
        return [(layers, reverse) for layers, reverse in ((self.forward_layers, False),
                                                          (self.backward_layers, True))
                if layers is not None]

    def forward(self, input: Tensor, hx=None):
        """Run every layer of every direction.

        Args:
            input: (T, B, input_size), or (B, T, input_size) with batch_first.
            hx: the initial states, laid out as torch.nn.LSTM / GRU lay out theirs: entry
                ``layer * num_directions + d`` of each state tensor (d = 0 forward, 1 backward)
                starts that layer. LSTM: a pair (h_0 (L*D, B, P), c_0 (L*D, B, hidden_size)),
                GRU: h_0 (L*D, B, hidden_size); L = num_layers, D = num_directions, P =
                proj_size or hidden_size. None starts from zeros.

        Returns:
            layers: (L, T, B, output_size), or (L, B, T, output_size) with batch_first:
                layer j's output; with direction "both", the forward stack's layer j
                concatenated with the backward stack's layer j (forward first). The backward
                stack reads the sequence from its end, so its output at t summarises
                input[t:] (a forward stack's, input[:t + 1]). With residual, layer j >= 1
                outputs its recurrent layer's output plus its input (the layer below's output).
            h_n: the final states, laid out as hx (for the backward stack, the state after
                reading input[0]).

        Raises:
            ValueError: input is not 3-D.
            RuntimeError: the states' leading size is not L * D; the single layers raise
                torch.nn's errors for other wrong sizes, dtypes and devices.
        """
        if input.dim() != 3:
            raise ValueError(f"{type(self).__name__}: expected 3-D input, got {input.dim()}-D")
        x = input.transpose(0, 1) if self.batch_first else input
        states = self._split_states(hx)
        per_direction = []
        finals: List[Optional[tuple]] = [None] * (self.num_layers * self.num_directions)
        for d, (layers, reverse) in enumerate(self._stacks()):
            h = x.flip(0) if reverse else x
            outputs = []
            for j, layer in enumerate(layers):
                k = j * self.num_directions + d
                y, finals[k] = layer(h, states[k])
                if self.residual and j > 0:
                    y = y + h
                outputs.append(y.flip(0) if reverse else y)
                h = y
            per_direction.append(outputs)
        stacked = torch.stack([torch.cat(by_layer, -1) if len(by_layer) > 1 else by_layer[0]
                               for by_layer in zip(*per_direction)])
        if self.batch_first:
            stacked = stacked.transpose(1, 2)
        return stacked, self._join_states(finals)

    # --- state layout (the subclasses differ in LSTM's (h, c) pair against GRU's h) ------
    def _state_tensors(self, hx) -> Tuple[Tensor, ...]:
        raise NotImplementedError

    def _from_state_tensors(self, tensors: Tuple[Tensor, ...]):
        raise NotImplementedError

    def _split_states(self, hx) -> list:
        """One initial state (in the single layer's form) per layer and direction."""
        count = self.num_layers * self.num_directions
        if hx is None:
            return [None] * count
        tensors = self._state_tensors(hx)
        for t in tensors:
            if t.dim() != 3 or t.shape[0] != count:
                raise RuntimeError(f"{type(self).__name__}: each initial state must be 3-D with "
                                   f"{count} (num_layers * num_directions) entries in dim 0, got "
                                   f"shape {tuple(t.shape)}")
        return [self._from_state_tensors(tuple(t[k:k + 1] for t in tensors)) for k in range(count)]

    def _join_states(self, finals: list):
        tensors = [self._state_tensors(f) for f in finals]
        return self._from_state_tensors(tuple(torch.cat(parts) for parts in zip(*tensors)))


class StackedLSTM(_Stacked):
    """LSTM layers stacked one on another, returning every layer's output.

    ``StackedLSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    residual=False, direction="forward", proj_size=0, device=None, dtype=None)``

    Layer 0 reads the input; layer j >= 1 reads layer j - 1's output of the same direction.
    Each layer is a single-layer fastrnn.LSTM (same parameters, names and initialisation as
    torch.nn.LSTM's), held in ``forward_layers`` / ``backward_layers`` (nn.ModuleList).

    Args:
        proj_size: as torch.nn.LSTM's: each layer's output (and recurrent h) is projected
            to proj_size by weight_hr_l0; 0 for none. ELMo uses 4096 cells projected to 512.
        residual: add each layer's input to its output for layers j >= 1 (ELMo connects
            its first layer to the second this way; Peters et al. 2018, section 3.4).
        direction: "forward" (left to right), "backward" (right to left) or "both": two
            independent stacks whose outputs are concatenated per layer.

    forward(input, hx=None) -> (layers, h_n) with layers (L, T, B, output_size) and h_n a
    pair (h_n (L*D, B, P), c_n (L*D, B, hidden_size)); see _Stacked.forward.
    """

    _layer_class = LSTM

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, residual: bool = False, direction: str = "forward",
                 proj_size: int = 0, device=None, dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, residual, direction,
                         device, dtype, proj_size=proj_size)
        self.proj_size = proj_size

    def _state_tensors(self, hx) -> Tuple[Tensor, ...]:
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise TypeError(f"StackedLSTM: hx must be a pair (h_0, c_0), got {type(hx).__name__}")
        return tuple(hx)

    def _from_state_tensors(self, tensors):
        return tuple(tensors)


class StackedGRU(_Stacked):
    """GRU layers stacked one on another, returning every layer's output.

    ``StackedGRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    residual=False, direction="forward", device=None, dtype=None)``: as StackedLSTM without
    proj_size; each layer is a single-layer fastrnn.GRU. forward(input, hx=None) ->
    (layers (L, T, B, output_size), h_n (L*D, B, hidden_size)).
    """

    _layer_class = GRU

    def _state_tensors(self, hx) -> Tuple[Tensor, ...]:
        if not isinstance(hx, Tensor):
            raise TypeError(f"StackedGRU: hx must be a Tensor, got {type(hx).__name__}")
        return (hx,)

    def _from_state_tensors(self, tensors):
        return tensors[0]
