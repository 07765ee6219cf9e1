"""Double backward for the recurrent layer ops, shared by every cell (LSTM, GRU, RNN).

A layer op's backward calls the cell's backward op (fastrnn::<cell>_layer_backward), whose
kernels compute first derivatives only. Gradient penalties, MAML-style meta-learning and
Hessian-vector products differentiate those first derivatives again: autograd records the
backward op when the first backward runs with create_graph=True, and later needs the
backward op's own vector-Jacobian product.

That product comes from a differentiable recomputation: each cell gives a function that
computes the backward op's outputs in plain PyTorch (its reference layer, run forward and
differentiated with create_graph=True), and autograd differentiates that function. It runs
on any device the reference runs on (CPU and CUDA alike), in the workspace precision
(float32 for 16-bit inputs, float64 for float64), and it is itself differentiable, so third
and higher derivatives work too. It is slower than the kernels, and only runs when a
gradient of a gradient is asked for.

The same reference also runs the whole layer when a torch.func transform (grad, jacrev,
jacfwd, jvp, vmap, hessian, ...) or forward-mode AD (torch.autograd.forward_ad) is active:
the ops' autograd formulas, registered through torch.library, give torch.func no way in
(torch raises "must override the setup_context staticmethod") and give forward-mode AD no
tangent (torch.func.jvp would see zeros). Plain PyTorch composes with every transform, so
run_composable computes the layer there, in the workspace precision, exactly as torch.nn.
"""
import math
from typing import Callable, Optional, Sequence

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula


def transform_active(*tensors: Optional[Tensor]) -> bool:
    """True when the fused ops cannot serve this call: a torch.func transform is active, or
    one of `tensors` carries a forward-mode AD tangent (torch.autograd.forward_ad).

    Dynamo evaluates it while tracing (torch.compile of a torch.func transform runs the
    transform on wrapped fake tensors), so compiled transforms take the reference too, and
    compiled plain calls keep the custom ops without a graph break (a test checks both)."""
    # Dynamo traces this query (unlike peek_interpreter_stack, which it reports as not None
    # even for a plain compiled call).
    if torch._C._are_functorch_transforms_active():
        return True
    return forward_ad._current_level >= 0 and any(
        t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def run_composable(reference_layer: Callable, tensors: Sequence[Optional[Tensor]], *rest,
                   workspace_dtype: torch.dtype) -> tuple:
    """reference_layer(*tensors, *rest) computed in `workspace_dtype` (the precision of the
    kernels' state and gate math) through differentiable casts, outputs cast back to the
    dtype of tensors[0]: the layer in plain PyTorch, for the calls transform_active flags."""
    dtype = tensors[0].dtype
    outputs = reference_layer(*(None if t is None else t.to(workspace_dtype) for t in tensors),
                              *rest)
    return tuple(o.to(dtype) for o in outputs)


def register_double_backward(backward_op, differentiable_backward: Callable,
                             num_differentiable: int) -> None:
    """Give `backward_op` (a torch.library custom op) an autograd formula.

    Args:
        backward_op: the cell's backward op (a custom op, or the name of one defined in C++,
            e.g. "fastrnn::ext_lstm_backward"). Its inputs start with the cotangents of the
            layer's outputs, then the layer's differentiable inputs (x, states, weights,
            biases; None allowed); `num_differentiable` counts both groups. The inputs after
            them (the saved output y and workspace, lengths, backend name, ...) receive no
            gradient: y and the workspace are functions of the layer's inputs, and the
            recomputation already differentiates through that dependence.
        differentiable_backward: takes the backward op's inputs and returns its outputs,
            computed by differentiable PyTorch ops (it may ignore y and the workspace).
        num_differentiable: how many leading inputs get gradients.
    """

    def setup_context(ctx, inputs, output):
        ctx.positions = [i for i, a in enumerate(inputs) if isinstance(a, Tensor)]
        ctx.constants = {i: a for i, a in enumerate(inputs) if not isinstance(a, Tensor)}
        ctx.save_for_backward(*(inputs[i] for i in ctx.positions))
        ctx.set_materialize_grads(False)

    def backward(ctx, *grad_outputs):
        inputs = _saved_inputs(ctx)
        wanted = [i for i in range(num_differentiable)
                  if ctx.needs_input_grad[i] and inputs[i] is not None]
        grads = vjp(differentiable_backward, inputs, wanted, grad_outputs)
        result = [None] * len(inputs)
        for i, g in zip(wanted, grads):
            result[i] = g
        return tuple(result)

    torch.library.register_autograd(backward_op, backward, setup_context=setup_context)


def _saved_inputs(ctx) -> list:
    inputs = [None] * (len(ctx.positions) + len(ctx.constants))
    for i, t in zip(ctx.positions, ctx.saved_tensors):
        inputs[i] = t
    for i, a in ctx.constants.items():
        inputs[i] = a
    return inputs


def vjp(fn: Callable, inputs: list, wanted: Sequence[int],
        grad_outputs: Sequence[Optional[Tensor]]) -> list:
    """Gradients of sum(<fn(*inputs)[k], grad_outputs[k]>) with respect to inputs[i] for i in
    `wanted` (zeros where an input does not matter). None grad_outputs count as zero.

    When the caller's backward runs with create_graph=True (grad mode on inside backward),
    the result stays attached to the graph of `inputs`, so it can be differentiated again.
    """
    create_graph = torch.is_grad_enabled()
    inputs = list(inputs)
    with torch.enable_grad():
        for i in wanted:
            # Without create_graph the inputs' history is not needed: differentiate with
            # respect to fresh leaves. With it, a view keeps the graph whole and still gives
            # each argument its own partial derivative when one tensor fills two arguments.
            if create_graph and inputs[i].requires_grad:
                inputs[i] = inputs[i].view_as(inputs[i])
            else:
                inputs[i] = inputs[i].detach().requires_grad_()
        outputs = fn(*inputs)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs)
                 if g is not None and o.requires_grad]
        leaves = [inputs[i] for i in wanted]
        if not pairs:
            return [torch.zeros_like(leaf) for leaf in leaves]
        grads = torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs],
                                    create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, grads)]


def first_derivatives(outputs: Sequence[Tensor], cotangents: Sequence[Tensor],
                      inputs: Sequence[Tensor]) -> list:
    """Differentiable gradients of sum(<outputs[k], cotangents[k]>) with respect to `inputs`
    (zeros where an input does not matter): the building block of a cell's
    differentiable_backward."""
    grads = torch.autograd.grad(list(outputs), list(inputs), list(cotangents), create_graph=True,
                                allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]


def variables(dtype: torch.dtype, *tensors: Optional[Tensor]) -> list:
    """`tensors` in `dtype` through differentiable casts, each requiring grad (None stays
    None). A tensor that does not require grad becomes a fresh leaf: a first derivative with
    respect to it may still be differentiated with respect to the others."""
    return [None if t is None else
            (t if t.requires_grad else t.detach().requires_grad_()).to(dtype) for t in tensors]


def register_flops(op_name: str, x_index: int, weight_indices: Sequence[int],
                   passes: int) -> None:
    """Tell torch.utils.flop_counter.FlopCounterMode (profilers, MFU reports) how many
    floating-point operations the layer op `op_name` ("fastrnn::gru_layer", ...) performs.

    Counted as FlopCounterMode counts torch.nn's layers: matrix products only, 2 FLOPs per
    multiply-add. Every weight matrix W (w_ih, w_hh, w_hr) multiplies one vector per step
    and batch row, so a forward pass costs 2 T B sum(W.numel()); a backward pass does two
    products per forward one (the gradient of the input and of the weight): `passes` = 1
    for a forward op, 2 for a backward op. Padded steps of a variable-length batch are
    counted (the formula sees shapes, not lengths).

    Args:
        x_index: position of x (T, B, I) among the op's arguments.
        weight_indices: positions of the weight matrices (None allowed: no projection).
    """
    namespace, name = op_name.split("::")

    @register_flop_formula(getattr(getattr(torch.ops, namespace), name))
    def flops(*shapes, out_shape=None, **kwargs) -> int:
        steps, batch = shapes[x_index][0], shapes[x_index][1]
        weights = sum(math.prod(shapes[i]) for i in weight_indices if shapes[i] is not None)
        return passes * 2 * steps * batch * weights
