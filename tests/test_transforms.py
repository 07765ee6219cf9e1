"""fastrnn's modules under torch.func transforms, forward-mode AD and the meta device,
against torch.nn's modules holding the same parameters (float64 where the backend has it).

Issue 21, items 1-3: forward-mode AD once returned zero tangents (silently wrong),
torch.func.grad / jacrev / functional_call raised, and the meta device raised. Under a
transform fastrnn computes the layer with its plain-PyTorch reference
(fastrnn/ops/layer_autograd.py: transform_active, run_composable), so every backend gives
torch.nn's values; the forced backend is still checked.
"""
import copy
import functools

import torch
import torch.autograd.forward_ad as forward_ad
from torch import nn
from torch.func import functional_call

import pytest

import fastrnn
from fastrnn import backends, testing
from tests.test_double_backward import runnable_backends

T, B, I, H = 5, 2, 3, 4

# (name, constructor kwargs): every cell, with the options whose code paths differ.
CASES = [
    ("GRU", {}),
    ("GRU", dict(num_layers=2, batch_first=True)),
    ("RNN", {}),
    ("RNN", dict(nonlinearity="relu", num_layers=2)),
    ("LSTM", {}),
    ("LSTM", dict(proj_size=2, bidirectional=True)),
]
CELL = {"GRU": "gru", "RNN": "rnn", "LSTM": "lstm"}


def backend_cases():
    """(backend, dtype, name, kwargs) for every case each backend CPU CI has can run:
    float64 where the backend supports it, else float32 (Triton under the interpreter)."""
    params = []
    for backend in ("reference", "ext", "triton"):
        for name, kwargs in CASES:
            op = CELL[name]
            needs = ("proj",) if kwargs.get("proj_size") else ()
            if backends._missing_features(backend, op, needs):
                continue
            if backend in runnable_backends(op, torch.float64):
                dtype = torch.float64
            elif backend in runnable_backends(op, torch.float32):
                dtype = torch.float32
            else:
                continue
            case_id = f"{backend}-{name}-" + "-".join(f"{k}={v}" for k, v in kwargs.items())
            params.append(pytest.param(backend, dtype, name, kwargs, id=case_id))
    return params


@pytest.fixture
def forced(monkeypatch):
    """Force a backend for the test's module calls."""
    def force(backend):
        monkeypatch.setenv("FASTRNN_BACKEND", backend)
    return force


def pair(name, kwargs, dtype):
    """(fastrnn module, torch.nn module) with the same parameters, in `dtype`."""
    torch.manual_seed(0)
    reference = getattr(nn, name)(I, H, **kwargs).to(dtype)
    ours = getattr(fastrnn, name)(I, H, **kwargs).to(dtype)
    ours.load_state_dict(reference.state_dict())
    return ours, reference


# The longest reduction of the cases (two layers, bidirectional: inputs of 2H).
REDUCTION_LENGTH = testing.recurrent_reduction_length(T, B, max(I, 2 * H), H, gates=4)


def in_dtype(module, dtype):
    """A copy of `module` in `dtype` (Module.to would change the module itself)."""
    return copy.deepcopy(module).to(dtype)


def assert_matches(actual, oracle, dtype, what):
    """`actual` against oracle(float64), torch.nn's computation in float64: at float64 to
    1e-10, else within twice the error of oracle(dtype), torch.nn's own computation in the
    same dtype (the same-dtype rule, fastrnn.testing)."""
    expected = oracle(torch.float64)
    if dtype == torch.float64:
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12, msg=lambda m: f"{what}: {m}")
    else:
        testing.assert_within_baseline(actual, oracle(dtype), expected, what,
                                       reduction_length=REDUCTION_LENGTH)


def inputs(dtype, unbatched=False, batch_first=False):
    torch.manual_seed(1)
    shape = (T, I) if unbatched else ((B, T, I) if batch_first else (T, B, I))
    return torch.randn(*shape, dtype=dtype), torch.randn(*shape, dtype=torch.float64)


def oracle_jvp(reference, x, v, dtype=torch.float64):
    """J v of torch.nn's output computed in `dtype`, from its full Jacobian (reverse mode):
    torch.nn's LSTM has no forward-mode formula, so the oracle does not use forward mode."""
    x, module = x.to(dtype), in_dtype(reference, dtype)
    jac = torch.autograd.functional.jacobian(lambda z: module(z)[0], x)
    return (jac.reshape(-1, x.numel()) @ v.to(dtype).reshape(-1)).reshape(jac.shape[:-x.dim()])


@pytest.mark.parametrize("backend,dtype,name,kwargs", backend_cases())
def test_jvp_and_jacfwd_equal_torch_nn(backend, dtype, name, kwargs, forced):
    """Item 1: the tangent is J v (it was all zeros), for torch.func.jvp, jacfwd and
    torch.autograd.forward_ad."""
    forced(backend)
    ours, reference = pair(name, kwargs, dtype)
    unbatched = not kwargs  # one-layer cases run the unbatched (T, I) input
    x, v = inputs(dtype, unbatched, kwargs.get("batch_first", False))
    expected = oracle_jvp(reference, x, v)
    assert expected.abs().max() > 0.1

    def oracle(d):
        return oracle_jvp(reference, x, v, d)

    _, tangent = torch.func.jvp(lambda z: ours(z)[0], (x,), (v.to(dtype),))
    assert_matches(tangent, oracle, dtype, "torch.func.jvp")

    with forward_ad.dual_level():
        out = ours(forward_ad.make_dual(x, v.to(dtype)))[0]
        assert_matches(forward_ad.unpack_dual(out).tangent, oracle, dtype, "forward_ad")

    jacobian = torch.func.jacfwd(lambda z: ours(z)[0])(x)
    flat = jacobian.reshape(-1, x.numel()) @ v.to(dtype).reshape(-1)
    assert_matches(flat.reshape(expected.shape), oracle, dtype, "jacfwd")


@pytest.mark.parametrize("backend,dtype,name,kwargs",
                         [p for p in backend_cases() if p.values[2] == "GRU" and not p.values[3]])
def test_jvp_with_respect_to_the_weights_and_state(backend, dtype, name, kwargs, forced):
    """Tangents of parameters (functional_call) and of h0 reach the output too."""
    forced(backend)
    ours, reference = pair(name, kwargs, dtype)
    x, _ = inputs(dtype)
    h0 = torch.randn(1, B, H, dtype=dtype)
    params = {k: v.detach() for k, v in ours.named_parameters()}
    tangents = {k: torch.randn_like(v) for k, v in params.items()}
    dh0 = torch.randn_like(h0)

    def f(p, h):
        return functional_call(ours, p, (x, h))[0]

    _, tangent = torch.func.jvp(f, (params, h0), (tangents, dh0))
    def oracle(d):
        module = in_dtype(reference, d)
        return torch.func.jvp(lambda p, h: functional_call(module, p, (x.to(d), h))[0],
                              ({k: v.to(d) for k, v in params.items()}, h0.to(d)),
                              ({k: v.to(d) for k, v in tangents.items()}, dh0.to(d)))[1]
    assert_matches(tangent, oracle, dtype, "jvp wrt parameters and h0")


@pytest.mark.parametrize("backend,dtype,name,kwargs", backend_cases())
def test_func_grad_and_jacrev_equal_torch_nn(backend, dtype, name, kwargs, forced):
    """Item 2: torch.func.grad and jacrev raised ("must override the setup_context
    staticmethod")."""
    forced(backend)
    ours, reference = pair(name, kwargs, dtype)
    x, _ = inputs(dtype, batch_first=kwargs.get("batch_first", False))
    def oracle_grad(d):
        xd = x.to(d).requires_grad_()
        return torch.autograd.grad(in_dtype(reference, d)(xd)[0].pow(2).sum(), xd)[0]

    def oracle_jacobian(d):
        module = in_dtype(reference, d)
        return torch.autograd.functional.jacobian(lambda z: module(z)[0], x.to(d))

    grad = torch.func.grad(lambda z: ours(z)[0].pow(2).sum())(x)
    assert_matches(grad, oracle_grad, dtype, "torch.func.grad")

    jacobian = torch.func.jacrev(lambda z: ours(z)[0])(x)
    assert_matches(jacobian, oracle_jacobian, dtype, "torch.func.jacrev")


@pytest.mark.parametrize("backend,dtype,name,kwargs", backend_cases())
def test_func_grad_of_functional_call_equals_torch_nn(backend, dtype, name, kwargs, forced):
    """Item 2, MAML style: gradient with respect to the parameters through functional_call,
    then one inner step and the outer gradient through it (a second derivative)."""
    forced(backend)
    ours, reference = pair(name, kwargs, dtype)
    x, _ = inputs(dtype, batch_first=kwargs.get("batch_first", False))
    params = {k: v.detach() for k, v in ours.named_parameters()}

    def loss(module, p, z):
        return functional_call(module, p, (z,))[0].pow(2).sum()

    def adapted_loss(module, p, z):
        inner = torch.func.grad(lambda q: loss(module, q, z))(p)
        return loss(module, {k: p[k] - 0.1 * inner[k] for k in p}, z)

    for f in (loss, adapted_loss):
        grads = torch.func.grad(lambda p: f(ours, p, x))(params)

        def oracle(d, k):
            module, torch_params = in_dtype(reference, d), {name: v.to(d) for name, v in params.items()}
            return torch.func.grad(lambda p: f(module, p, x.to(d)))(torch_params)[k]
        for k in params:
            assert_matches(grads[k], functools.partial(oracle, k=k), dtype, f"{f.__name__}: d/d{k}")


@pytest.mark.parametrize("backend,dtype,name,kwargs", backend_cases())
def test_vmap_of_forward_equals_torch_nn(backend, dtype, name, kwargs, forced):
    """vmap of the forward worked before the fix; it must keep working."""
    forced(backend)
    ours, reference = pair(name, kwargs, dtype)
    torch.manual_seed(2)
    xs = torch.randn(3, T, B, I, dtype=dtype)
    if kwargs.get("batch_first"):
        xs = xs.transpose(1, 2)
    out = torch.func.vmap(lambda z: ours(z)[0])(xs)
    assert_matches(out, lambda d: torch.stack([in_dtype(reference, d)(z.to(d))[0] for z in xs]), dtype, "vmap")


def test_compiled_transforms_equal_torch_nn():
    """torch.compile of torch.func.jvp once traced the custom op and returned zeros."""
    ours, reference = pair("GRU", {}, torch.float32)
    x, v = inputs(torch.float32, unbatched=True)
    torch._dynamo.reset()
    tangent = torch.compile(lambda z, t: torch.func.jvp(lambda u: ours(u)[0], (z,), (t,))[1])(
        x, v.float())
    assert_matches(tangent, lambda d: oracle_jvp(reference, x, v, d), torch.float32, "compiled jvp")
    grad = torch.compile(lambda z: torch.func.grad(lambda u: ours(u)[0].pow(2).sum())(z))(x)

    def oracle_grad(d):
        xd = x.to(d).requires_grad_()
        return torch.autograd.grad(in_dtype(reference, d)(xd)[0].pow(2).sum(), xd)[0]
    assert_matches(grad, oracle_grad, torch.float32, "compiled grad")


def test_ordinary_calls_still_run_the_fused_ops(monkeypatch):
    """Outside transforms the fused ops run (the layer op, or the extension's op directly on
    the modules' short path); the composable reference serves transforms only."""
    composable = []
    from fastrnn.ops.gru import op as gru_op
    original = gru_op.run_composable
    monkeypatch.setattr(gru_op, "run_composable", lambda *a, **k: composable.append(a) or original(*a, **k))
    ours, _ = pair("GRU", {}, torch.float32)
    x, _ = inputs(torch.float32)
    ours(x)[0].sum().backward()
    assert composable == []
    torch.func.grad(lambda z: ours(z)[0].sum())(x)
    assert len(composable) == 1


# ---- item 3: the meta device --------------------------------------------------------------

META_CASES = [
    ("GRU", {}, {}),
    ("RNN", dict(nonlinearity="relu", num_layers=2), {}),
    ("LSTM", dict(proj_size=2), {}),
    ("LSTM", dict(batch_first=True, bidirectional=True), {}),
    ("GRU", {}, dict(unbatched=True)),
    ("LSTM", dict(proj_size=3, num_layers=2), dict(hx=True)),
    ("GRU", dict(batch_first=True), dict(hx=True, unbatched=True)),
]


def meta_arguments(module, unbatched=False, hx=False):
    batch_first = module.batch_first
    x = torch.empty((T, I) if unbatched else ((B, T, I) if batch_first else (T, B, I)), device="meta")
    if not hx:
        return (x,)
    layers = module.num_layers * (2 if module.bidirectional else 1)
    batch = () if unbatched else (B,)
    out = module.proj_size or module.hidden_size
    h = torch.empty(layers, *batch, out, device="meta")
    if isinstance(module, (nn.LSTM, fastrnn.LSTM)):
        return x, (h, torch.empty(layers, *batch, module.hidden_size, device="meta"))
    return x, h


def shapes(output):
    flat = torch.utils._pytree.tree_leaves(output)
    return [(tuple(t.shape), t.dtype, t.device.type) for t in flat]


@pytest.mark.parametrize("name,kwargs,call", META_CASES)
def test_meta_forward_gives_torch_nn_shapes(name, kwargs, call):
    ours = getattr(fastrnn, name)(I, H, **kwargs).to("meta")
    reference = getattr(nn, name)(I, H, **kwargs).to("meta")
    expected = shapes(reference(*meta_arguments(reference, **call)))
    assert shapes(ours(*meta_arguments(ours, **call))) == expected
    assert all(device == "meta" for _, _, device in expected)


def test_meta_initialisation_then_to_empty():
    with torch.device("meta"):
        ours = fastrnn.LSTM(I, H, num_layers=2, proj_size=2)
    assert all(p.is_meta for p in ours.parameters())
    ours.to_empty(device="cpu")
    torch.manual_seed(0)
    reference = nn.LSTM(I, H, num_layers=2, proj_size=2)
    ours.load_state_dict(reference.state_dict())
    x, _ = inputs(torch.float32)
    for a, b in zip(shapes(ours(x)), shapes(reference(x))):
        assert a == b
    assert_matches(ours(x)[0], lambda d: in_dtype(reference, d)(x.to(d))[0], torch.float32, "after to_empty")


def test_compiled_plain_calls_keep_the_fused_op():
    """Outside any transform, a compiled call traces fastrnn's custom op (the fused kernels),
    not the reference: Dynamo once reported a functorch interpreter for every call."""
    x = torch.randn(3, 2, 4)
    module = fastrnn.LSTM(4, 8)
    explanation = torch._dynamo.explain(lambda z: module(z)[0])(x)
    assert explanation.graph_break_count == 0
    assert "fastrnn.lstm_layer" in explanation.graphs[0].code
