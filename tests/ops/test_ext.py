"""The compiled extension fastrnn._C: its LSTM/GRU ops against the reference layer and
torch.nn (CPU here, CUDA where a GPU is present), opcheck, torch.compile, and how it loads
beside the Python-defined ops of the same namespace."""
import os
import subprocess
import sys
from functools import partial

import pytest
import torch

from fastrnn import backends, errors, functional
from fastrnn.ops.gru import reference as gru_reference
from fastrnn.ops.lstm import reference as lstm_reference
from fastrnn.testing import assert_matches_torch, assert_within_baseline, recurrent_reduction_length
from tests.ops.layer_cases import (GRU, LSTM, assert_lengths_match_reference, check_parity, labels,
                                   outputs_and_grads, random_inputs, torch_layer, with_grads)

ext = pytest.mark.ext
cuda = pytest.mark.cuda
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rand(*shape, dtype=torch.float64, device="cpu"):
    return torch.randn(*shape, dtype=dtype, device=device, requires_grad=True)


def lstm_args(T=5, B=3, I=4, H=6, P=None, bias=True, dtype=torch.float64, device="cpu"):
    out = P or H
    return [rand(T, B, I, dtype=dtype, device=device), rand(B, out, dtype=dtype, device=device),
            rand(B, H, dtype=dtype, device=device), rand(4 * H, I, dtype=dtype, device=device),
            rand(4 * H, out, dtype=dtype, device=device),
            rand(4 * H, dtype=dtype, device=device) if bias else None,
            rand(4 * H, dtype=dtype, device=device) if bias else None,
            rand(out, H, dtype=dtype, device=device) if P else None]


def gru_args(T=5, B=3, I=4, H=6, bias=True, dtype=torch.float64, device="cpu"):
    return [rand(T, B, I, dtype=dtype, device=device), rand(B, H, dtype=dtype, device=device),
            rand(3 * H, I, dtype=dtype, device=device), rand(3 * H, H, dtype=dtype, device=device),
            rand(3 * H, dtype=dtype, device=device) if bias else None,
            rand(3 * H, dtype=dtype, device=device) if bias else None]


def run_python(code: str) -> str:
    """Runs `code` in a fresh interpreter (import order matters for these checks)."""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


# ---- loading ----------------------------------------------------------------------------

def test_package_works_without_the_extension():
    # A None entry in sys.modules makes `import fastrnn._C` raise ImportError, as when the
    # extension was never built.
    out = run_python(
        "import sys; sys.modules['fastrnn._C'] = None\n"
        "import torch, fastrnn\n"
        "from fastrnn import backends, errors, functional\n"
        "assert backends.ext_module() is None and not backends.ext_available('cpu', 'lstm')\n"
        "assert backends.choose('cpu', 'lstm') == 'reference'\n"
        "x = torch.randn(3, 2, 4)\n"
        "y, h = functional.gru_layer(x, None, torch.randn(9, 4), torch.randn(9, 3))\n"
        "try:\n"
        "    functional.gru_layer(x, None, torch.randn(9, 4), torch.randn(9, 3), backend='ext')\n"
        "except RuntimeError as e:\n"
        "    print(e)\n")
    assert "fastrnn._C is not built" in out


@ext
@pytest.mark.parametrize("first", ["extension", "package"])
def test_extension_and_python_ops_share_the_namespace(first):
    imports = ["import fastrnn._C", "import fastrnn"]
    if first == "package":
        imports.reverse()
    out = run_python(
        "import torch\n" + "\n".join(imports) + "\n"
        "from fastrnn import functional\n"
        "for name in ('lstm_layer', 'lstm_layer_backward', 'gru_layer', 'gru_layer_backward',\n"
        "             'ext_lstm_forward', 'ext_lstm_backward', 'ext_gru_forward', 'ext_gru_backward'):\n"
        "    assert hasattr(torch.ops.fastrnn, name), name\n"
        "x = torch.randn(3, 2, 4, dtype=torch.float64)\n"
        "w = [torch.randn(24, 4, dtype=torch.float64), torch.randn(24, 6, dtype=torch.float64)]\n"
        "a = functional.lstm_layer(x, None, None, *w, backend='ext')\n"
        "b = functional.lstm_layer(x, None, None, *w, backend='reference')\n"
        "assert all(torch.allclose(p, q) for p, q in zip(a, b))\n"
        # Where the fake implementation is not loaded yet, the error names its module.
        "from torch._subclasses.fake_tensor import FakeTensorMode\n"
        "def fake_call():\n"
        "    with FakeTensorMode():\n"
        "        return torch.ops.fastrnn.ext_gru_forward(torch.empty(3, 2, 4), torch.empty(2, 3),\n"
        "            torch.empty(9, 4), torch.empty(9, 3), None, None, None)\n"
        "try:\n"
        "    fake_call()\n"
        "except Exception:\n"
        "    import traceback\n"
        "    assert 'fastrnn.ops.gru.ext' in traceback.format_exc()\n"
        "else:\n"
        "    raise AssertionError('fake call ran without its implementation loaded')\n"
        "import fastrnn.ops.gru.ext\n"
        "assert fake_call()[2].shape == (3, 2, 12)\n"
        "print('ok')\n")
    assert out.strip() == "ok"


@ext
def test_automatic_choice_on_cpu_is_the_extension():
    assert backends.choose("cpu", "lstm", ("proj", "lengths", "fp64")) == "ext"
    assert backends.choose("cpu", "gru", ("lengths", "fp64")) == "ext"


# ---- CPU parity -------------------------------------------------------------------------

@ext
@pytest.mark.parametrize("proj", [None, 3])
@pytest.mark.parametrize("lengths", [None, [5, 2, 3]])
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_gradcheck(proj, lengths, bias):
    lengths = torch.tensor(lengths) if lengths is not None else None

    def fn(*a):
        return functional.lstm_layer(*a, lengths=lengths, backend="ext")

    assert torch.autograd.gradcheck(fn, lstm_args(P=proj, bias=bias))


@ext
@pytest.mark.parametrize("lengths", [None, [5, 2, 3]])
@pytest.mark.parametrize("bias", [True, False])
def test_gru_gradcheck(lengths, bias):
    lengths = torch.tensor(lengths) if lengths is not None else None

    def fn(*a):
        return functional.gru_layer(*a, lengths=lengths, backend="ext")

    assert torch.autograd.gradcheck(fn, gru_args(bias=bias))


@ext
@pytest.mark.parametrize("cell", [LSTM, GRU], ids=["lstm", "gru"])
@pytest.mark.parametrize("T, B, I, H", [(1, 1, 3, 5), (7, 3, 5, 13), (4, 2, 1, 33)])
def test_matches_nn_fp32(cell, T, B, I, H):
    check_parity(cell, T, B, I, H, "cpu", backend="ext")


@ext
@pytest.mark.parametrize("cell", [LSTM, GRU], ids=["lstm", "gru"])
@pytest.mark.parametrize("with_states, bias, contiguous",
                         [(False, True, True), (True, False, True), (True, True, False)])
def test_matches_nn_options(cell, with_states, bias, contiguous):
    check_parity(cell, 6, 3, 4, 7, "cpu", bias=bias, with_states=with_states,
                 contiguous=contiguous, backend="ext")


@ext
@pytest.mark.parametrize("cell", [LSTM, GRU], ids=["lstm", "gru"])
def test_matches_nn_bf16(cell):
    check_parity(cell, 6, 3, 8, 16, "cpu", dtype=torch.bfloat16, backend="ext")


@ext
def test_lstm_projection_matches_nn_lstm_fp32():
    T, B, I, H, P = 6, 3, 5, 9, 4
    lstm = torch.nn.LSTM(I, H, proj_size=P)
    x = torch.randn(T, B, I, requires_grad=True)
    h0, c0 = torch.randn(B, P, requires_grad=True), torch.randn(B, H, requires_grad=True)
    params = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0,
              lstm.weight_hr_l0]
    cotangents = [torch.randn(T, B, P), torch.randn(B, P), torch.randn(B, H)]
    ours = with_grads(lambda *a: functional.lstm_layer(*a, backend="ext"), cotangents)(x, h0, c0, *params)
    names = ["y", "h_T", "c_T"] + ["d_" + n for n in ["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr"]]
    assert_matches_torch(ours, with_grads(lambda x, h0, c0, *w: torch_layer("LSTM", x, [h0, c0], w), cotangents),
                         [x, h0, c0, *params], names, reduction_length=max(I + P, 4 * H, T * B))


@ext
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_long_sequence_fp32(cell):
    """T=300: within twice torch.nn's own fp32 error (errors grow with T for both)."""
    T, B, I, H = 300, 2, 8, 24
    kind = cell.upper()
    args = lstm_args(T, B, I, H, dtype=torch.float32)[:7] if cell == "lstm" else gru_args(T, B, I, H, dtype=torch.float32)
    n_states = 2 if cell == "lstm" else 1
    # Weights at torch.nn's scale (1/sqrt(H)): with unit-variance weights the recurrence is
    # chaotic and any two precisions part ways after a few dozen steps.
    with torch.no_grad():
        for w in args[1 + n_states:3 + n_states]:
            w /= H ** 0.5
    layer = functional.lstm_layer if cell == "lstm" else functional.gru_layer
    cotangents = [torch.randn(T, B, H)] + [torch.randn(B, H)] * n_states
    ours = with_grads(lambda *a: layer(*a, backend="ext"), cotangents)(*args)
    names = ["y", "h_T", "c_T"][:1 + n_states] + [f"d_arg{i}" for i in range(len(args))]
    assert_matches_torch(
        ours, with_grads(lambda x, *r: torch_layer(kind, x, r[:n_states], r[n_states:]), cotangents), args,
        names, reduction_length=recurrent_reduction_length(T, B, I, H, 4 if cell == "lstm" else 3))

@ext
def test_lengths_ignore_grad_at_padded_steps():
    """Padded outputs are zero and what grad_y holds there (even NaN) changes nothing."""
    args = lstm_args(T=5, B=3, dtype=torch.float32)
    lengths = torch.tensor([5, 2, 3])
    y, h, c = functional.lstm_layer(*args, lengths=lengths, backend="ext")
    padded = torch.arange(5)[:, None] >= lengths[None, :]
    assert (y[padded] == 0).all()
    clean = torch.randn_like(y).masked_fill(padded[..., None], 0.0)
    dirty = clean.masked_fill(padded[..., None], float("nan"))
    leaves = [a for a in args if a is not None]
    g_clean = torch.autograd.grad((y * clean).sum() + h.sum() + c.sum(), leaves, retain_graph=True)
    from fastrnn.ops.lstm import ext as lstm_ext
    with torch.no_grad():
        y2, h2, c2, ws = lstm_ext.forward(*[a.detach() if a is not None else None for a in args],
                                          lengths)
        bwd = lstm_ext.backward(dirty, torch.ones_like(h2), torch.ones_like(c2),
                                *[a.detach() if a is not None else None for a in args], y2, ws,
                                lengths)
    dbias = bwd[5]
    for name, a, e in zip(["x", "h0", "c0", "w_ih", "w_hh", "b_ih"], bwd[:6], g_clean[:6]):
        torch.testing.assert_close(a, e, msg=name)
    torch.testing.assert_close(dbias, g_clean[6])


@ext
def test_fp16_inputs_give_fp16_outputs():
    args = [a.detach().half() if a is not None else None for a in gru_args(dtype=torch.float32)]
    y, h = functional.gru_layer(*args, backend="ext")
    assert y.dtype == h.dtype == torch.float16
    expected = gru_reference.gru_layer(*[a.double() for a in args])
    baseline = gru_reference.gru_layer(*args)
    assert_within_baseline(y, baseline[0], expected[0], "y")


@ext
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_empty_batch(cell):
    """B = 0 runs and gives empty outputs and gradients, as torch.nn does."""
    args = lstm_args(B=0) if cell == "lstm" else gru_args(B=0)
    layer = functional.lstm_layer if cell == "lstm" else functional.gru_layer
    outs = layer(*args, backend="ext")
    assert outs[0].shape == (5, 0, 6)
    leaves = [a for a in args if a is not None]
    grads = torch.autograd.grad(sum(o.sum() for o in outs), leaves)
    assert grads[0].shape == args[0].shape
    # No sequence, no gradient: the weight gradients are exactly zero.
    assert all((g == 0).all() for g in grads)


@ext
def test_bad_input_is_a_clear_error():
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, _ = [a.detach() if a is not None else None
                                            for a in lstm_args()]
    with pytest.raises(RuntimeError, match="ext_lstm_forward: h0 must have shape"):
        torch.ops.fastrnn.ext_lstm_forward(x, h0[:, :2], c0, w_ih, w_hh, b_ih, b_hh, None, None)
    with pytest.raises(RuntimeError, match="ext_gru_forward: w_hh must be 2-D with 3"):
        torch.ops.fastrnn.ext_gru_forward(x, h0, w_ih[:18], w_hh[:20], None, None, None)
    with pytest.raises(RuntimeError, match="lengths must be int64"):
        torch.ops.fastrnn.ext_lstm_forward(x, h0, c0, w_ih, w_hh, None, None, None,
                                           torch.tensor([1, 2, 3], dtype=torch.int32))


# ---- torch.library -------------------------------------------------------------------------

@ext
def test_opcheck():
    from fastrnn.ops.gru import ext as gru_ext
    from fastrnn.ops.lstm import ext as lstm_ext
    lengths = torch.tensor([5, 2, 3])
    cases = [(lstm_ext.forward_op, lstm_args(P=3) + [lengths]),
             (lstm_ext.forward_op, lstm_args(bias=False) + [None]),
             (gru_ext.forward_op, gru_args() + [lengths])]
    with torch.no_grad():
        y, h, c, ws = lstm_ext.forward_op(*[a.detach() if isinstance(a, torch.Tensor) else a
                                            for a in cases[0][1]])
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = [a.detach() for a in cases[0][1][:8]]
    cases.append((lstm_ext.backward_op, [torch.randn_like(y), torch.randn_like(h),
                                         torch.randn_like(c), x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                         w_hr, y, ws, lengths]))
    for op, args in cases:
        result = torch.library.opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), (op, result)


@ext
def test_lstm_inference_opcheck():
    detached = [a.detach() if a is not None else None for a in lstm_args(T=4, H=16)]
    result = torch.library.opcheck(torch.ops.fastrnn.ext_lstm_inference.default,
                                   detached + [torch.tensor([4, 2, 3])])
    assert all(v == "SUCCESS" for v in result.values()), result


# ext_lstm_inference: the forward without the workspace, which the modules run when no
# gradient is taken. Same kernels, so the same bits as ext_lstm_forward's outputs.
@ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T, H, P, lengths", [(6, 64, None, None), (6, 64, None, [6, 2, 4]),
                                              (5, 7, None, [5, 1, 3]), (5, 8, 3, None),
                                              (1, 64, None, None)],
                         ids=["packed", "packed-lengths", "per-step", "projection", "one-step"])
def test_lstm_inference_equals_forward(dtype, T, H, P, lengths):
    args = [a.detach() if a is not None else None for a in lstm_args(T=T, B=3, I=5, H=H, P=P, dtype=dtype)]
    lengths = torch.tensor(lengths) if lengths is not None else None
    y, h, c, _ = torch.ops.fastrnn.ext_lstm_forward(*args, lengths)
    for ours, expected in zip(torch.ops.fastrnn.ext_lstm_inference(*args, lengths), (y, h, c)):
        torch.testing.assert_close(ours, expected, rtol=0, atol=0)


@ext
def test_module_without_gradient_equals_with():
    """fastrnn.LSTM under no_grad (the op without workspace) gives the bits it gives when
    autograd records the call."""
    import fastrnn
    torch.manual_seed(0)
    module = fastrnn.LSTM(16, 64, num_layers=2)
    x = torch.randn(7, 3, 16)
    y, (h, c) = module(x)
    assert y.requires_grad
    with torch.no_grad():
        y0, (h0, c0) = module(x)
    for ours, expected in zip((y0, h0, c0), (y, h, c)):
        torch.testing.assert_close(ours, expected.detach(), rtol=0, atol=0)


@ext
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_torch_compile_fullgraph(cell):
    args = lstm_args(dtype=torch.float32) if cell == "lstm" else gru_args(dtype=torch.float32)
    op = torch.ops.fastrnn.ext_lstm_forward if cell == "lstm" else torch.ops.fastrnn.ext_gru_forward

    def loss_fn(*a):
        outs = op(*a, None)
        return sum(o.sum() for o in outs[:-1])

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    leaves = [a for a in args if a is not None]
    grads = torch.autograd.grad(compiled(*args), leaves)
    expected = torch.autograd.grad(loss_fn(*args), leaves)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


# ---- CUDA -----------------------------------------------------------------------------------

@ext
@cuda
@pytest.mark.parametrize("persistent", ["1", "0"])
@pytest.mark.parametrize("cell", [LSTM, GRU], ids=["lstm", "gru"])
@pytest.mark.parametrize("T, B, I, H", [(1, 1, 3, 5), (9, 4, 7, 37), (6, 3, 16, 301)])
def test_cuda_matches_nn_fp32(monkeypatch, persistent, cell, T, B, I, H):
    monkeypatch.setenv("FASTRNN_CUDA_PERSISTENT", persistent)
    check_parity(cell, T, B, I, H, "cuda", backend="ext")


@ext
@cuda
@pytest.mark.parametrize("cell", [LSTM, GRU], ids=["lstm", "gru"])
def test_cuda_matches_nn_bf16(cell):
    check_parity(cell, 8, 4, 16, 32, "cuda", dtype=torch.bfloat16, backend="ext")


@ext
@cuda
@pytest.mark.parametrize("persistent", ["1", "0"])
@pytest.mark.parametrize("proj", [None, 3])
@pytest.mark.parametrize("lengths", [None, [5, 2, 3]])
def test_cuda_lstm_gradcheck(monkeypatch, persistent, proj, lengths):
    monkeypatch.setenv("FASTRNN_CUDA_PERSISTENT", persistent)
    lengths = torch.tensor(lengths, device="cuda") if lengths is not None else None

    def fn(*a):
        return functional.lstm_layer(*a, lengths=lengths, backend="ext")

    assert torch.autograd.gradcheck(fn, lstm_args(P=proj, device="cuda"))


@ext
@cuda
@pytest.mark.parametrize("persistent", ["1", "0"])
@pytest.mark.parametrize("lengths", [None, [5, 2, 3]])
def test_cuda_gru_gradcheck(monkeypatch, persistent, lengths):
    monkeypatch.setenv("FASTRNN_CUDA_PERSISTENT", persistent)
    lengths = torch.tensor(lengths, device="cuda") if lengths is not None else None

    def fn(*a):
        return functional.gru_layer(*a, lengths=lengths, backend="ext")

    assert torch.autograd.gradcheck(fn, gru_args(device="cuda"))


@ext
@cuda
def test_cuda_persistent_and_per_step_agree_on_a_large_layer(monkeypatch):
    """A layer the size of the benchmarks: the persistent kernels (forward and backward)
    against the per-step path, outputs and every gradient."""
    T, B, I, H = 64, 16, 256, 512
    args = lstm_args(T, B, I, H, dtype=torch.float32, device="cuda")[:7]
    cotangents = [torch.randn(T, B, H, device="cuda"), torch.ones(B, H, device="cuda"),
                  torch.ones(B, H, device="cuda")]
    names = ["y", "h_T", "c_T", "d_x", "d_h0", "d_c0", "d_w_ih", "d_w_hh", "d_b_ih", "d_b_hh"]
    expected = with_grads(lambda x, h0, c0, *w: torch_layer("LSTM", x, [h0, c0], w), cotangents)
    with torch.backends.cudnn.flags(allow_tf32=False):   # exact fp32, as the extension computes
        for persistent in ("1", "0"):
            monkeypatch.setenv("FASTRNN_CUDA_PERSISTENT", persistent)
            ours = with_grads(lambda *a: functional.lstm_layer(*a, backend="ext"), cotangents)(*args)
            assert_matches_torch(ours, expected, args, [f"{n} (persistent {persistent})" for n in names],
                                 reduction_length=recurrent_reduction_length(T, B, I, H, 4))


@ext
@cuda
def test_cuda_opcheck():
    from fastrnn.ops.lstm import ext as lstm_ext
    args = lstm_args(device="cuda") + [torch.tensor([5, 2, 3], device="cuda")]
    result = torch.library.opcheck(lstm_ext.forward_op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


# The CPU packed kernels of both cells: W_hh in panels of 16 units (fp32; 8 for fp64)
# forward and 64 (fp32; 32 for fp64) backward, a thread team over the panels (two threads
# from B=1, H=128 on), and for the LSTM the packed input projection for products of at
# least 2^26 multiply-adds.
@ext
@pytest.mark.parametrize("cell", [LSTM, GRU], ids=["lstm", "gru"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("T, B, I, H", [(6, 3, 8, 64), (5, 1, 16, 128), (4, 5, 8, 48)],
                         ids=["H64", "B1-H128", "H48-forward-only"])
def test_packed_paths_match_nn_fp32(cell, threads, T, B, I, H):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_parity(cell, T, B, I, H, "cpu", backend="ext")
    finally:
        torch.set_num_threads(old)


@ext
def test_packed_lstm_projecting_the_input_first():
    """Stacked [W_ih; W_hh] past 4 MB (I = H = 384, fp32): the packed forward takes the input
    gates from a projection over all steps instead of streaming W_ih every step."""
    check_parity(LSTM, 3, 2, 384, 384, "cpu", backend="ext")


@ext
@pytest.mark.parametrize("cell", [LSTM, GRU], ids=["lstm", "gru"])
@pytest.mark.parametrize("bias, contiguous", [(False, True), (True, False)])
def test_packed_paths_options(cell, bias, contiguous):
    """The packed paths without bias (the LSTM's step product then adds no bias) and with a
    non-contiguous input (the LSTM's step product reads x_t in place)."""
    check_parity(cell, 6, 3, 8, 64, "cpu", bias=bias, with_states=True, contiguous=contiguous,
                 backend="ext")


@ext
@pytest.mark.parametrize("cell", [LSTM, GRU], ids=["lstm", "gru"])
@pytest.mark.parametrize("threads", [1, 2])
def test_packed_projection_within_pytorch_fp32_error(cell, threads):
    """T=64, B=32, I=H=256: the input projection and dx take the packed kernel. Weight
    gradients sum 2048 products, past where fp32 meets 1e-5 (torch.nn's own fp32 error is
    ~2e-5), so the rule is the one for long sequences: at most 2x PyTorch's own fp32 error."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        module = cell.make(256, 256)
        module64 = cell.make(256, 256, dtype=torch.float64)
        module64.load_state_dict(module.state_dict())
        x, states = random_inputs(cell, 64, 32, 256, 256, torch.float32, "cpu")
        ours = outputs_and_grads(lambda m, xx, ss: cell.run_fastrnn(m, xx, ss, backend="ext"),
                                 module, x, states)
        baseline = outputs_and_grads(cell.run_torch, module, x, states)
        truth = outputs_and_grads(cell.run_torch, module64, x.double(), [s.double() for s in states])
        for name, a, b, e in zip(labels(cell, module, states), ours, baseline, truth):
            assert_within_baseline(a, b, e, name,
                                   reduction_length=recurrent_reduction_length(64, 32, 256, 256, cell.gates))
    finally:
        torch.set_num_threads(old)


@ext
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("lengths", [None, [3, 1, 2]])
def test_packed_paths_gradcheck(cell, lengths):
    layer, make_args = {"lstm": (functional.lstm_layer, lstm_args),
                        "gru": (functional.gru_layer, gru_args)}[cell]
    lengths = torch.tensor(lengths) if lengths is not None else None

    def fn(*a):
        return layer(*a, lengths=lengths, backend="ext")

    assert torch.autograd.gradcheck(fn, make_args(T=3, B=3, I=2, H=32))


@ext
def test_gru_packed_paths_lengths_match_reference():
    module = GRU.make(8, 64)
    x, [h0] = random_inputs(GRU, 6, 3, 8, 64, torch.float32, "cpu")
    args = [t.requires_grad_() for t in (x, h0)] + [
        getattr(module, n) for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    assert_lengths_match_reference(partial(functional.gru_layer, backend="ext"),
                                   gru_reference.gru_layer, args, torch.tensor([6, 2, 4]),
                                   ["y", "h_T"])


@ext
def test_lstm_packed_paths_lengths_match_reference():
    # Weights at nn.LSTM's initial scale: unit-variance ones saturate the gates, and then
    # even the plain fp32 reference is ~5e-5 off its fp64 self.
    module = LSTM.make(8, 64)
    x, (h0, c0) = random_inputs(LSTM, 6, 3, 8, 64, torch.float32, "cpu")
    args = [t.requires_grad_() for t in (x, h0, c0)] + [
        getattr(module, n) for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    assert_lengths_match_reference(partial(functional.lstm_layer, backend="ext"),
                                   lstm_reference.lstm_layer, args, torch.tensor([6, 2, 4]),
                                   ["y", "h_T", "c_T"])


@cuda
def test_check_errors_waits_for_the_cuda_extension_barriers():
    """A CUDA build registers the op fastrnn.check_errors() calls to wait for the persistent
    kernels' barrier reports; with none timed out it returns quietly."""
    if backends.ext_module() is None or not backends.ext_available("cuda"):
        pytest.skip("the extension was built without CUDA")
    assert hasattr(torch.ops.fastrnn, "ext_check_barrier_timeouts")
    args = [a.detach().float().cuda() for a in lstm_args(T=4, B=2, I=8, H=64)[:7]]
    functional.lstm_layer(*args, backend="ext")
    errors.check_errors()
