"""PyTorch's module test recipe (test/test_modules.py) with fastrnn's classes swapped in.

torch tests every nn module on the sample inputs of its ModuleInfo entry in
torch.testing._internal.common_modules.module_db: forward (against a no-batch-dim
reference), factory kwargs, repr, pickling, non-contiguous inputs, gradcheck and
gradgradcheck (total and partial derivatives), memory format, train/eval, construction on
the meta device, and the entry's error inputs. This file runs the same checks, written here,
on the same samples for nn.LSTM / nn.GRU / nn.RNN and for fastrnn.LSTM / GRU / RNN: every
check stock torch passes on CPU must pass with fastrnn too. fastrnn is also compared with
torch's module holding the same weights, outputs and gradients.
"""
import copy
import functools
import io
import subprocess
import sys
from itertools import product

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

import fastrnn
from fastrnn import testing

MODES = [m for m in ("LSTM", "GRU", "RNN") if hasattr(fastrnn, m)]
CLASSES = {("torch", m): getattr(nn, m) for m in MODES}
CLASSES.update({("fastrnn", m): getattr(fastrnn, m) for m in MODES})
DTYPES = {"fp32": torch.float32, "fp64": torch.float64}

_DUMP = """
import sys, torch
from torch.testing._internal.common_modules import module_db

def plain(sample):
    forward = sample.forward_input  # None for construction errors
    return (sample.constructor_input.args, sample.constructor_input.kwargs,
            forward.args if forward else (), forward.kwargs if forward else {})

recipe = {}
for info in module_db:
    name = info.module_cls.__name__
    if name not in sys.argv[2:]:
        continue
    for dtype in info.dtypes:
        for training in (True, False):
            # torch draws the samples from its global generator (make_tensor): seeded, every
            # run compares the same inputs.
            torch.manual_seed(0)
            samples = info.module_inputs_func(info, device="cpu", dtype=dtype,
                                              requires_grad=False, training=training)
            errors = info.module_error_inputs_func(info, device="cpu", dtype=dtype,
                                                   requires_grad=False, training=training)
            recipe[name, dtype, training] = {
                "samples": [plain(s) for s in samples],
                "errors": [(e.error_on.name, e.error_type, e.error_regex,
                            plain(e.module_error_input)) for e in errors],
            }
torch.save(recipe, sys.argv[1])
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """torch's sample and error inputs per (module name, dtype, training), as plain values.

    Read in a subprocess: importing torch's internal test modules freezes the global
    torch.backends flags for the rest of the process."""
    pytest.importorskip("expecttest")
    path = tmp_path_factory.mktemp("module_db") / "recipe.pt"
    subprocess.run([sys.executable, "-c", _DUMP, str(path), *MODES], check=True, timeout=300)
    return torch.load(path, weights_only=False)


def samples(recipe, mode, dtype, training, requires_grad=False):
    """torch's samples: (constructor args, kwargs, forward args, kwargs), fresh copies with
    floating-point tensors requiring grad if asked."""
    def prepare(t):
        if not isinstance(t, torch.Tensor):
            return t
        t = t.detach().clone()
        return t.requires_grad_(requires_grad and t.is_floating_point())

    found = recipe[mode, dtype, training]["samples"]
    assert found, f"module_db has no samples for {mode}"
    return [tree_map(prepare, sample) for sample in found]


def build(impl, mode, ctor_args, ctor_kwargs, dtype, training, device="cpu"):
    module = CLASSES[impl, mode](*ctor_args, **ctor_kwargs).to(device).to(dtype)
    return module.train(training)


def pair(mode, ctor_args, ctor_kwargs, dtype, training):
    """torch's module and fastrnn's with its weights."""
    theirs = build("torch", mode, ctor_args, ctor_kwargs, dtype, training)
    ours = build("fastrnn", mode, ctor_args, ctor_kwargs, dtype, training)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def batched_reference(module, args, batch_first):
    """torch's no-batch-dim reference: the unbatched sample run as a batch of one."""
    x, hx = args[0], (args[1] if len(args) > 1 else None)
    batch_dim = 0 if batch_first else 1
    if hx is not None:
        hx = tree_map(lambda h: h.unsqueeze(1), hx)
    output, hidden = module(x.unsqueeze(batch_dim), hx)
    return output.squeeze(batch_dim), tree_map(lambda h: h.squeeze(1), hidden)


def differentiable(tree):
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor) and t.requires_grad]


IMPLS = ["torch", "fastrnn"]
CASES = [pytest.param(impl, mode, dtype, training, id=f"{impl}-{mode}-{dtype}-{'train' if training else 'eval'}")
         for impl, mode, dtype, training in product(IMPLS, MODES, DTYPES, (True, False))]
FP64_CASES = [c for c in CASES if c.values[2] == "fp64"]


@pytest.mark.parametrize("impl,mode,dtype,training", CASES)
def test_forward(recipe, impl, mode, dtype, training):
    """torch's test_forward: the output equals the no-batch-dim reference, and after
    .float() / .double() the module runs with every parameter in that dtype. fastrnn's
    outputs, and the gradients of input, hx and every parameter, also equal those of
    torch's module with the same weights."""
    dt = DTYPES[dtype]
    for ctor_args, ctor_kwargs, args, kwargs in samples(recipe, mode, dt, training, True):
        theirs, ours = pair(mode, ctor_args, ctor_kwargs, dt, training)
        module = ours if impl == "fastrnn" else theirs
        with torch.random.fork_rng():
            outputs = module(*args, **kwargs)
        torch.testing.assert_close(outputs, batched_reference(module, args, module.batch_first))
        if impl == "fastrnn":
            assert_results_match_torch(theirs, ours, args, kwargs, tree_map(torch.randn_like, outputs))
        (module.float() if dt == torch.float32 else module.double())(*args, **kwargs)
        assert all(p.dtype == dt and p.device.type == "cpu" for p in module.parameters())


@pytest.mark.parametrize("impl,mode,dtype,training", CASES)
def test_factory_kwargs_repr_and_meta_device(recipe, impl, mode, dtype, training):
    """torch's test_factory_kwargs, test_repr and test_device_ctx_init: device/dtype
    keywords reach every parameter; repr and str work (fastrnn's is torch's with a
    "fastrnn." prefix, so print(model) shows a swap); a module
    built under torch.device('meta') has the CPU module's parameter metadata."""
    dt = DTYPES[dtype]
    for ctor_args, ctor_kwargs, _, _ in samples(recipe, mode, dt, training):
        cls = CLASSES[impl, mode]
        module = cls(*ctor_args, **ctor_kwargs, device="cpu", dtype=dt).train(training)
        assert all(p.dtype == dt and p.device.type == "cpu" for p in module.parameters())
        str(module)
        expected = repr(CLASSES["torch", mode](*ctor_args, **ctor_kwargs))
        assert repr(module) == (expected if impl == "torch" else "fastrnn." + expected)
        with torch.device("meta"):
            meta = cls(*ctor_args, **ctor_kwargs)
        on_cpu = cls(*ctor_args, **ctor_kwargs)
        for (name, p_meta), (_, p_cpu) in zip(meta.named_parameters(), on_cpu.named_parameters()):
            assert p_meta.is_meta, name
            assert (p_meta.shape, p_meta.stride(), p_meta.dtype, p_meta.requires_grad) == (
                p_cpu.shape, p_cpu.stride(), p_cpu.dtype, p_cpu.requires_grad), name


@pytest.mark.parametrize("impl,mode,dtype,training", CASES)
def test_pickle(recipe, impl, mode, dtype, training):
    """torch's test_pickle: torch.save / torch.load gives a module with the same output."""
    dt = DTYPES[dtype]
    for ctor_args, ctor_kwargs, args, kwargs in samples(recipe, mode, dt, training):
        module = build(impl, mode, ctor_args, ctor_kwargs, dt, training)
        with torch.random.fork_rng():
            output = module(*args, **kwargs)
        buffer = io.BytesIO()
        torch.save(module, buffer)
        buffer.seek(0)
        clone = torch.load(buffer, weights_only=False)
        assert type(clone) is type(module)
        with torch.random.fork_rng():
            torch.testing.assert_close(clone(*args, **kwargs), output)


def _non_contiguous(tree):
    """torch's trick: every tensor of dim >= 1 as a strided view with the same values."""
    def inner(t):
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return t
        out = torch.repeat_interleave(t, 2, dim=-1)[..., ::2].detach()
        return out.requires_grad_(t.requires_grad)
    return tree_map(inner, tree)


def assert_results_match_torch(theirs, ours, args, kwargs, grad_outputs):
    """fastrnn's outputs and gradients against torch's module with the same weights: equal
    at float64 (assert_close's default), else under the same-dtype rule against torch's
    module in float64 (fastrnn.testing)."""
    results = [tree_flatten(r)[0] for r in _outputs_and_grads(ours, args, kwargs, grad_outputs)]
    baseline = [tree_flatten(r)[0] for r in _outputs_and_grads(theirs, args, kwargs, grad_outputs)]
    dtype = next(ours.parameters()).dtype
    if dtype == torch.float64:
        torch.testing.assert_close(results, baseline)
        return
    oracle = [tree_flatten(r)[0] for r in _outputs_and_grads(
        copy.deepcopy(theirs).double(), *_in_float64((args, kwargs, grad_outputs)))]
    x = args[0]
    rows = x.numel() // x.shape[-1]   # T x B (T for an unbatched input)
    width = max(theirs.input_size, (2 if theirs.bidirectional else 1) * theirs.hidden_size)
    K = testing.recurrent_reduction_length(rows, 1, width, theirs.hidden_size, gates=4)
    for kind, ours_part, base_part, oracle_part in zip(("output", "gradient"), results, baseline, oracle):
        for i, (a, b, e) in enumerate(zip(ours_part, base_part, oracle_part)):
            testing.assert_within_baseline(a, b, e, f"{kind} {i}", reduction_length=K)


def _in_float64(tree):
    def cast(t):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return t
        return t.detach().double().requires_grad_(t.requires_grad)
    return tree_map(cast, tree)


def _outputs_and_grads(module, args, kwargs, grad_outputs):
    """Outputs, and gradients of sum(<output, grad_output>) w.r.t. the differentiable
    inputs and every parameter."""
    with torch.random.fork_rng():
        outputs = module(*args, **kwargs)
    flat = tree_flatten(outputs)[0]
    leaves = differentiable((args, kwargs)) + list(module.parameters())
    grads = torch.autograd.grad(flat, leaves, tree_flatten(grad_outputs)[0])
    return outputs, grads


@pytest.mark.parametrize("impl,mode,dtype,training", CASES)
def test_non_contiguous_tensors(recipe, impl, mode, dtype, training):
    """torch's test_non_contiguous_tensors: non-contiguous inputs and output gradients give
    the outputs and gradients of contiguous ones."""
    dt = DTYPES[dtype]
    for ctor_args, ctor_kwargs, args, kwargs in samples(recipe, mode, dt, training, True):
        module = build(impl, mode, ctor_args, ctor_kwargs, dt, training)
        with torch.random.fork_rng():
            default = module(*args, **kwargs)
        grad_outputs = tree_map(lambda o: torch.randn_like(o), default)
        expected = _outputs_and_grads(module, args, kwargs, grad_outputs)
        inputs = [(args, kwargs), _non_contiguous((args, kwargs))]
        for (in_args, in_kwargs), g_out in product(inputs, [grad_outputs, _non_contiguous(grad_outputs)]):
            outputs, grads = _outputs_and_grads(module, in_args, in_kwargs, g_out)
            torch.testing.assert_close(outputs, expected[0])
            torch.testing.assert_close(grads, expected[1], atol=1e-4, rtol=0)


def _check_gradients(recipe, impl, mode, training, check, partials):
    """torch's _test_gradients_helper: `check` (gradcheck or gradgradcheck) of the module
    as a function of its inputs and all parameters, then (with `partials`) of its inputs and
    each parameter alone."""
    for ctor_args, ctor_kwargs, args, kwargs in samples(recipe, mode, torch.float64, training, True):
        module = build(impl, mode, ctor_args, ctor_kwargs, torch.float64, training)
        params = tuple(module.parameters())
        flat, spec = tree_flatten((args, params))

        def fn(*flat_inputs):
            new_args, _ = tree_unflatten(list(flat_inputs), spec)
            with torch.random.fork_rng():
                return tuple(tree_flatten(module(*new_args, **kwargs))[0])

        assert check(fn, flat)
        if not partials:
            continue
        for p in params:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
            assert check(fn, flat)
            p.requires_grad_(False)


GRAD_CASES = [pytest.param(impl, mode, training, id=f"{impl}-{mode}-{'train' if training else 'eval'}")
              for impl, mode, training in product(IMPLS, MODES, (True, False))]
CHECKS = {"gradcheck": torch.autograd.gradcheck, "gradgradcheck": torch.autograd.gradgradcheck}


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("impl,mode,training", GRAD_CASES)
def test_grad_and_gradgrad(recipe, impl, mode, training, check):
    """torch's test_grad and test_gradgrad (float64), total derivative in gradcheck's fast
    mode (a random projection of the Jacobian), which keeps the run short; the exact recipe
    is test_grad_and_gradgrad_exact_recipe."""
    _check_gradients(recipe, impl, mode, training,
                     functools.partial(CHECKS[check], fast_mode=True), partials=False)


@pytest.mark.slow
@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("impl,mode,training", GRAD_CASES)
def test_grad_and_gradgrad_exact_recipe(recipe, impl, mode, training, check):
    """torch's test_grad and test_gradgrad as torch runs them: the full Jacobian, for the
    total derivative and for each parameter alone (minutes per case on a small CPU)."""
    _check_gradients(recipe, impl, mode, training, CHECKS[check], partials=True)


@pytest.mark.parametrize("impl,mode,dtype,training", CASES)
def test_memory_format(recipe, impl, mode, dtype, training):
    """torch's test_memory_format for 2-D/3-D inputs: after module.to(memory_format=
    preserve / contiguous) the outputs and (in training) the gradients are unchanged and
    contiguous."""
    dt = DTYPES[dtype]
    for ctor_args, ctor_kwargs, args, kwargs in samples(recipe, mode, dt, training, True):
        module = build(impl, mode, ctor_args, ctor_kwargs, dt, training)
        grad_outputs = None
        with torch.random.fork_rng():
            desired = module(*args, **kwargs)
        if training:
            grad_outputs = tree_map(torch.rand_like, desired)
            desired_grads = _outputs_and_grads(module, args, kwargs, grad_outputs)[1]
        for memory_format in (torch.preserve_format, torch.contiguous_format):
            module.to(memory_format=memory_format)
            with torch.random.fork_rng():
                outputs = module(*args, **kwargs)
            torch.testing.assert_close(outputs, desired)
            assert all(o.is_contiguous() for o in tree_flatten(outputs)[0])
            if training:
                grads = _outputs_and_grads(module, args, kwargs, grad_outputs)[1]
                torch.testing.assert_close(grads, desired_grads)
                assert all(g.is_contiguous() for g in grads)


@pytest.mark.parametrize("impl,mode", [(i, m) for i in IMPLS for m in MODES])
def test_if_train_and_eval_modes_differ(recipe, impl, mode):
    """torch's check of ModuleInfo.train_and_eval_differ (True for the RNNs): without its
    `training` attribute the module runs, or fails only for want of it."""
    for ctor_args, ctor_kwargs, args, kwargs in samples(recipe, mode, torch.float32, True):
        module = build(impl, mode, ctor_args, ctor_kwargs, torch.float32, True)
        delattr(module, "training")
        try:
            module(*args, **kwargs)
        except AttributeError as error:
            assert "'training'" in str(error)


@pytest.mark.parametrize("impl,mode,dtype,training", CASES)
def test_errors(recipe, impl, mode, dtype, training):
    """torch's test_errors: each error input of the ModuleInfo entry raises its type and
    message, at construction or in forward."""
    errors = recipe[mode, DTYPES[dtype], training]["errors"]
    assert errors
    for error_on, error_type, error_regex, (ctor_args, ctor_kwargs, args, kwargs) in errors:
        cls = CLASSES[impl, mode]
        if error_on == "CONSTRUCTION_ERROR":
            with pytest.raises(error_type, match=error_regex):
                cls(*ctor_args, **ctor_kwargs)
        else:
            module = cls(*ctor_args, **ctor_kwargs)
            with pytest.raises(error_type, match=error_regex):
                module(*args, **kwargs)


# --- CUDA: torch's test_cpu_gpu_parity and test_multiple_device_transfer ----------------

@pytest.mark.cuda
@pytest.mark.parametrize("mode,dtype,training", [c.values[1:] for c in CASES if c.values[0] == "fastrnn"])
def test_cpu_gpu_parity(recipe, mode, dtype, training):
    """The same module on CPU and on the GPU: outputs and every gradient agree (TF32 off,
    torch's tolerances for this test: 5e-2 in fp32, 4e-4 in fp64)."""
    dt = DTYPES[dtype]
    tolerance = {"atol": 5e-2, "rtol": 0} if dt == torch.float32 else {"atol": 4e-4, "rtol": 0}
    for ctor_args, ctor_kwargs, args, kwargs in samples(recipe, mode, dt, training, True):
        on_cpu = build("fastrnn", mode, ctor_args, ctor_kwargs, dt, training)
        on_gpu = copy.deepcopy(on_cpu).cuda()
        gpu_args = tree_map(lambda t: t.detach().cuda().requires_grad_(t.requires_grad)
                            if isinstance(t, torch.Tensor) else t, args)
        cpu_out = on_cpu(*args, **kwargs)
        grad_outputs = tree_map(torch.randn_like, cpu_out)
        expected = _outputs_and_grads(on_cpu, args, kwargs, grad_outputs)
        actual = _outputs_and_grads(on_gpu, gpu_args, kwargs, tree_map(lambda g: g.cuda(), grad_outputs))
        torch.testing.assert_close(tree_map(lambda t: t.cpu(), actual), expected, **tolerance)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", MODES)
def test_multiple_device_transfer(recipe, mode):
    """GPU, then CPU, then GPU again: the module runs and its parameters follow."""
    for ctor_args, ctor_kwargs, args, kwargs in samples(recipe, mode, torch.float32, True):
        module = build("fastrnn", mode, ctor_args, ctor_kwargs, torch.float32, True, device="cuda")
        gpu_args = tree_map(lambda t: t.cuda() if isinstance(t, torch.Tensor) else t, args)
        for device, inputs in (("cuda", gpu_args), ("cpu", args), ("cuda", gpu_args)):
            module.to(device)
            module(*inputs, **kwargs)
            assert all(p.device.type == device for p in module.parameters())
