"""fastrnn.StackedLSTM / StackedGRU against the same stack composed from torch.nn's
single-layer modules holding the same weights: every layer's output, the final states and
all gradients, for each direction, with and without residual connections and proj_size.
"""
import pytest
import torch
from torch import nn

import fastrnn
from fastrnn import testing

T, B, I, H, P, L = 5, 3, 6, 7, 4, 3  # odd T, sizes not powers of two; 3 layers: 2 residual joins

# Residual cases start from given states, the others from zeros.
CASES = [pytest.param(cell, direction, residual, proj, id=f"{cell}-{direction}-res{int(residual)}-proj{proj}")
         for cell, proj in (("lstm", 0), ("lstm", P), ("gru", 0))
         for direction in ("forward", "backward", "both")
         for residual in (False, True)]


def make(cell, direction, residual, proj, dtype, batch_first=False):
    options = dict(proj_size=proj) if cell == "lstm" else {}
    cls = fastrnn.StackedLSTM if cell == "lstm" else fastrnn.StackedGRU
    return cls(I, H, L, residual=residual, direction=direction, batch_first=batch_first,
               dtype=dtype, **options)


def torch_stack(ours):
    """torch.nn single-layer modules with our layers' weights, per direction."""
    stacks = []
    for layers, reverse in ours._stacks():
        copies = []
        for layer in layers:
            options = dict(proj_size=layer.proj_size) if isinstance(layer, fastrnn.LSTM) else {}
            theirs = getattr(nn, layer.mode)(layer.input_size, layer.hidden_size, dtype=layer.weight_ih_l0.dtype,
                                             **options)
            theirs.load_state_dict(layer.state_dict())
            copies.append(theirs)
        stacks.append((copies, reverse))
    return stacks


def run_torch_stack(stacks, residual, x, hx, cell):
    """The oracle: each direction's layers composed by hand (the backward stack reads x
    reversed in time); outputs (L, T, B, D*P) and final states in nn.LSTM's layout."""
    D = len(stacks)
    per_direction, finals = [], {}
    for d, (layers, reverse) in enumerate(stacks):
        h = x.flip(0) if reverse else x
        outputs = []
        for j, layer in enumerate(layers):
            k = j * D + d
            state = None if hx is None else (tuple(s[k:k + 1] for s in hx) if cell == "lstm" else hx[k:k + 1])
            y, finals[k] = layer(h, state)
            if residual and j > 0:
                y = y + h
            outputs.append(y.flip(0) if reverse else y)
            h = y
        per_direction.append(outputs)
    layers_out = torch.stack([torch.cat(ys, -1) for ys in zip(*per_direction)])
    ordered = [finals[k] for k in range(len(finals))]
    if cell == "lstm":
        return layers_out, tuple(torch.cat([f[i] for f in ordered]) for i in range(2))
    return layers_out, torch.cat(ordered)


def inputs(cell, direction, proj, dtype, with_state, generator):
    D = 2 if direction == "both" else 1
    x = torch.randn(T, B, I, dtype=dtype, generator=generator)
    hx = None
    if with_state:
        h = torch.randn(L * D, B, proj or H, dtype=dtype, generator=generator)
        hx = (h, torch.randn(L * D, B, H, dtype=dtype, generator=generator)) if cell == "lstm" else h
    return x, hx


def states(hx):
    return [] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]


def run_and_grad(module_fn, params, x, hx, upstream):
    """Outputs, final states, and the gradients of sum(outputs * do) + sum(h_n * dh_n) for
    x, hx and every parameter."""
    leaves = [x] + states(hx) + list(params)
    for t in leaves:
        t.grad = None
    layers_out, final = module_fn(x, hx)
    final = states(final)
    loss = (layers_out * upstream[0]).sum() + sum((f * u).sum() for f, u in zip(final, upstream[1:]))
    grads = torch.autograd.grad(loss, leaves)
    return layers_out, final, grads


@pytest.mark.parametrize("cell, direction, residual, proj", CASES)
def test_matches_torch_nn_stack_fp64(cell, direction, residual, proj):
    with_state = residual
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    ours = make(cell, direction, residual, proj, torch.float64)
    stacks = torch_stack(ours)
    x, hx = inputs(cell, direction, proj, torch.float64, with_state, g)
    x.requires_grad_(True)
    for s in states(hx):
        s.requires_grad_(True)
    expected, expected_final = run_torch_stack(stacks, residual, x, hx, cell)
    upstream = [torch.randn(expected.shape, dtype=torch.float64, generator=g)]
    upstream += [torch.randn(f.shape, dtype=torch.float64, generator=g) for f in states(expected_final)]

    theirs_params = [p for layers, _ in stacks for layer in layers for p in layer.parameters()]
    ours_params = [p for layers, _ in ours._stacks() for layer in layers for p in layer.parameters()]
    assert [p.shape for p in ours_params] == [p.shape for p in theirs_params]
    got = run_and_grad(ours, ours_params, x, hx, upstream)
    want = run_and_grad(lambda x, hx: run_torch_stack(stacks, residual, x, hx, cell), theirs_params, x, hx,
                        upstream)
    D = 2 if direction == "both" else 1
    assert got[0].shape == (L, T, B, D * (proj or H)) == (L, T, B, ours.output_size)
    torch.testing.assert_close(got[0], want[0])
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a, b)
    names = ["x"] + [f"hx[{i}]" for i in range(len(states(hx)))] + [f"param {i}" for i in range(len(ours_params))]
    for name, a, b in zip(names, got[2], want[2]):
        torch.testing.assert_close(a, b, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("cell, proj", [("lstm", P), ("gru", 0)])
def test_fp32_within_torch_own_error(cell, proj):
    """fp32 stack against the fp64 oracle: within 2x torch.nn's own fp32 error plus a floor
    (fastrnn.testing's rule), outputs and input gradient."""
    torch.manual_seed(0)
    ours = make(cell, "both", True, proj, torch.float32)
    oracle = make(cell, "both", True, proj, torch.float64)
    oracle.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, B, I, generator=g)
    do = torch.randn(L, T, B, ours.output_size, generator=g)

    def value_and_dx(fn, x):
        x = x.clone().requires_grad_(True)
        y = fn(x)
        (dx,) = torch.autograd.grad((y * do.to(y.dtype)).sum(), x)
        return y, dx

    ours_y, ours_dx = value_and_dx(lambda x: ours(x)[0], x)
    ref_y, ref_dx = value_and_dx(lambda x: run_torch_stack(torch_stack(oracle), True, x, None, cell)[0], x.double())
    base_y, base_dx = value_and_dx(lambda x: run_torch_stack(torch_stack(ours), True, x, None, cell)[0], x)
    testing.assert_within_baseline(ours_y, base_y, ref_y, "layers")
    testing.assert_within_baseline(ours_dx, base_dx, ref_dx, "dx")


@pytest.mark.interpreter
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_triton_backend_matches_torch_nn_stack(cell, monkeypatch):
    """The stack's layers run whichever backend the drop-in modules pick: forced to the
    Triton kernels (under the interpreter on CPU), the stack still matches torch.nn's."""
    monkeypatch.setenv("FASTRNN_BACKEND", "triton")
    torch.manual_seed(0)
    ours = make(cell, "both", True, 0, torch.float32)
    x = torch.randn(T, B, I)
    oracle = make(cell, "both", True, 0, torch.float64)
    oracle.load_state_dict(ours.state_dict())
    expected = run_torch_stack(torch_stack(oracle), True, x.double(), None, cell)[0]
    baseline = run_torch_stack(torch_stack(ours), True, x, None, cell)[0]
    testing.assert_within_baseline(ours(x)[0], baseline, expected, "layers")


def test_batch_first_is_a_transpose():
    torch.manual_seed(0)
    time_major = make("lstm", "both", True, P, torch.float64)
    batch_major = make("lstm", "both", True, P, torch.float64, batch_first=True)
    batch_major.load_state_dict(time_major.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    a, (h_a, c_a) = time_major(x)
    b, (h_b, c_b) = batch_major(x.transpose(0, 1))
    torch.testing.assert_close(b, a.transpose(1, 2))
    torch.testing.assert_close(h_b, h_a)
    torch.testing.assert_close(c_b, c_a)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_state_carries_across_windows(direction):
    """Truncated BPTT's premise: reading x in two windows with the state carried (the
    forward stack left window first, the backward stack right window first) gives the
    outputs of reading it whole."""
    torch.manual_seed(0)
    stack = make("lstm", direction, True, P, torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    whole, final = stack(x)
    left, right = x[:2], x[2:]
    if direction == "forward":
        a, state = stack(left)
        b, final_windows = stack(right, state)
    else:
        b, state = stack(right)
        a, final_windows = stack(left, state)
    torch.testing.assert_close(torch.cat([a, b], 1), whole)
    for s, t in zip(final_windows, final):
        torch.testing.assert_close(s, t)


def test_compiles_without_graph_breaks():
    """One graph (fullgraph=True raises on a break), same values and gradients as eager."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    stack = fastrnn.StackedLSTM(I, H, 2, residual=True, direction="both", proj_size=P)
    x = torch.randn(T, B, I, requires_grad=True)

    def run(x):
        layers, (h, c) = stack(x)
        return layers.square().sum() + h.sum() + c.sum()

    compiled = torch.compile(run, fullgraph=True, backend="eager")
    params = list(stack.parameters())
    got = torch.autograd.grad(compiled(x), [x] + params)
    want = torch.autograd.grad(run(x), [x] + params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_every_layer_is_a_fastrnn_module_with_nn_names():
    stack = fastrnn.StackedLSTM(I, H, 2, direction="both", proj_size=P)
    assert all(type(m) is fastrnn.LSTM and m.num_layers == 1
               for m in [*stack.forward_layers, *stack.backward_layers])
    assert "backward_layers.1.weight_hr_l0" in stack.state_dict()
    assert stack.forward_layers[1].input_size == P
    gru = fastrnn.StackedGRU(I, H, 2, direction="backward")
    assert gru.forward_layers is None and type(gru.backward_layers[0]) is fastrnn.GRU


def test_errors():
    with pytest.raises(ValueError, match="direction"):
        fastrnn.StackedLSTM(I, H, 2, direction="bidirectional")
    with pytest.raises(ValueError, match="num_layers"):
        fastrnn.StackedGRU(I, H, 0)
    with pytest.raises(ValueError, match="proj_size"):  # fastrnn.GRU's (and nn.GRU's) own error
        fastrnn.StackedGRU(I, H, 2, proj_size=3)
    stack = fastrnn.StackedLSTM(I, H, 2, direction="both")
    x = torch.randn(T, B, I)
    with pytest.raises(ValueError, match="3-D"):
        stack(x[0])
    with pytest.raises(RuntimeError, match="4 .num_layers \\* num_directions"):
        stack(x, (torch.zeros(2, B, H), torch.zeros(2, B, H)))
    with pytest.raises(TypeError, match="pair"):
        stack(x, torch.zeros(4, B, H))
    with pytest.raises(RuntimeError):  # the single layer's own check: wrong batch size
        stack(x, (torch.zeros(4, B + 1, H), torch.zeros(4, B + 1, H)))
