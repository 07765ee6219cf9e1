"""The Triton sampling and softmax kernels alone (fastrnn.ops.sampling.triton,
fastrnn.ops.softmax.triton), under the interpreter on tiny rows: the split of a row across
programs changes nothing (kept sets, tokens, softmax bits), kept sets equal the sort-based
reference on the kernels' own probabilities, the draw equals an exact inverse-CDF oracle,
extreme temperatures and non-finite logits, and the static-check hook.

The interpreter runs programs one after another: it checks the arithmetic and the
cross-program protocol (launch boundaries, integer atomics), not GPU timing or resources,
which only the static compile (static_configs) and a GPU session check.
"""
import inspect
import math

import pytest
import torch
import triton.language as tl

from fastrnn.ops.sampling import reference
from fastrnn.ops.sampling import triton as sampling
from fastrnn.ops.softmax import triton as softmax

pytestmark = pytest.mark.interpreter

TINY = torch.finfo(torch.float32).tiny
INF = float("inf")


def params(B, V, temperature=1.0, top_k=None, top_p=None, min_p=None):
    """Per-row parameters as the backend modules take them (op.py has checked them)."""
    def row(value, default, dtype):
        value = default if value is None else value
        if isinstance(value, torch.Tensor):
            return value.to(dtype)
        return torch.full((B,), value, dtype=dtype)
    return (row(temperature, 1.0, torch.float32), row(top_k, V, torch.int64).clamp(1, V),
            row(top_p, 1.0, torch.float64), row(min_p, 0.0, torch.float32))


def kernel_probs(logits, temperature, programs_per_row=None):
    """The Triton softmax (float32), with T = 1 standing in on greedy rows."""
    t = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    return softmax.forward(logits.float().contiguous(), t, False, programs_per_row)


def expected_mask(logits, temperature, top_k, top_p, min_p):
    """The sort-based reference on the Triton softmax's probabilities."""
    mask = reference.kept_mask_from_probs(kernel_probs(logits, temperature), top_k, top_p, min_p)
    return torch.where((temperature == 0)[:, None], reference.greedy_mask(logits), mask)


def expected_tokens(logits, temperature, mask, uniform):
    """Inverse CDF over the kept tokens in index order, exactly as the kernel defines it:
    masses are p truncated to multiples of 2^-61, summed as integers; the token is the
    first kept one whose running mass exceeds floor(u * Z) (u * Z a float64 product)."""
    probs = kernel_probs(logits, temperature).double()
    weight = torch.where(mask, (probs * 2.0 ** 61).floor(), 0.0).long()
    running = weight.cumsum(-1)
    tokens = []
    for row in range(logits.shape[0]):
        if temperature[row] == 0:
            tokens.append(int(logits[row].argmax()))
            continue
        total = int(running[row, -1])
        target = int(float(uniform[row]) * float(total))
        crossed = ((running[row] > target) & (weight[row] > 0)).nonzero()
        tokens.append(int(crossed[0]) if len(crossed) else int((weight[row] > 0).nonzero()[-1]))
    return torch.tensor(tokens)


def random_rows(seed, B, V, ties):
    gen = torch.Generator().manual_seed(seed)
    if ties:
        logits = torch.randint(-3, 3, (B, V), generator=gen).float()
    else:
        logits = torch.randn(B, V, generator=gen) * 3
    temperature = torch.rand(B, generator=gen) + 0.3
    temperature[1] = 0.0  # a greedy row
    top_k = torch.randint(1, V + 1, (B,), generator=gen)
    top_k[2] = V  # top-p alone
    top_p = torch.rand(B, generator=gen).double() * 0.98 + 0.01
    top_p[3] = 1.0  # top-k alone
    min_p = torch.rand(B, generator=gen) * 0.2
    min_p[0] = 0.0
    uniform = torch.rand(B, generator=gen, dtype=torch.float64)
    return logits, (temperature, top_k, top_p, min_p), uniform


# ---- the split of a row across programs ---------------------------------------------------

@pytest.mark.parametrize("V,ties", [(200, False), (200, True), (37, False)])
def test_split_rows_give_the_reference_kept_set_and_the_same_tokens(V, ties):
    logits, rows, uniform = random_rows(V + ties, 5, V, ties)
    expected = expected_mask(logits, *rows)
    tokens = expected_tokens(logits, rows[0], expected, uniform)
    for programs in (1, 2, 4):
        mask, status = sampling.kept_mask(logits, *rows, programs_per_row=programs)
        assert torch.equal(mask, expected), programs
        assert status.tolist() == [0] * 5
        drawn, status = sampling.sample(logits, *rows, uniform, programs_per_row=programs)
        assert torch.equal(drawn, tokens), programs
        assert status.tolist() == [0] * 5


def test_split_changes_no_softmax_bit():
    x = torch.randn(3, 300) * 4
    x[1, 7] = -INF
    t = torch.tensor([1.0, 0.3, 7.0])
    one = softmax.forward(x, t, False, programs_per_row=1)
    for programs in (2, 5):
        assert torch.equal(softmax.forward(x, t, False, programs_per_row=programs), one)
    assert torch.equal(softmax.forward(x.half(), t, False, 3).float(),
                       softmax.forward(x.half(), t, False, 1).float())


def test_greedy_ties_go_to_the_lowest_index_across_programs():
    logits = torch.zeros(2, 200)
    logits[0, [150, 20, 199]] = 3.0  # maxima in different chunks
    logits[1, [64, 128]] = 1.0  # at chunk starts
    rows = params(2, 200, temperature=0.0)
    for programs in (1, 4):
        tokens, _ = sampling.sample(logits, *rows, torch.zeros(2, dtype=torch.float64),
                                    programs_per_row=programs)
        assert tokens.tolist() == [20, 64]
        mask, _ = sampling.kept_mask(logits, *rows, programs_per_row=programs)
        assert mask.nonzero().tolist() == [[0, 20], [1, 64]]


def test_top_k_and_top_p_keep_tie_groups_across_programs():
    logits = torch.full((1, 200), -1.0)
    logits[0, ::9] = 2.0  # 23 tokens tied at the top, spread over every chunk
    logits[0, 5::9] = 1.0
    top = set(range(0, 200, 9))
    second = top | set(range(5, 200, 9))
    for top_k, top_p, kept in ((1, 1.0, top), (23, 1.0, top), (24, 1.0, second), (200, 0.01, top)):
        rows = params(1, 200, top_k=top_k, top_p=top_p)
        for programs in (1, 3):
            mask, _ = sampling.kept_mask(logits, *rows, programs_per_row=programs)
            assert set(mask[0].nonzero().flatten().tolist()) == kept, (top_k, top_p, programs)


def test_uniform_at_the_ends_of_the_kept_mass():
    logits = torch.randn(2, 150, generator=torch.Generator().manual_seed(3))
    rows = params(2, 150, top_k=40, top_p=0.7)
    mask = expected_mask(logits, *rows)
    kept = [row.nonzero().flatten() for row in mask]
    for programs in (1, 3):
        first, _ = sampling.sample(logits, *rows, torch.zeros(2, dtype=torch.float64),
                                   programs_per_row=programs)
        assert first.tolist() == [int(k[0]) for k in kept]
        almost_one = torch.full((2,), 1.0 - 2.0 ** -53, dtype=torch.float64)
        last, _ = sampling.sample(logits, *rows, almost_one, programs_per_row=programs)
        assert last.tolist() == [int(k[-1]) for k in kept]


def test_fp16_logits_give_the_probabilities_of_their_float32_values():
    logits = (torch.randn(3, 130, generator=torch.Generator().manual_seed(4)) * 3).half()
    rows = params(3, 130, temperature=0.8, top_k=30, top_p=0.8, min_p=0.02)
    expected = expected_mask(logits.float(), *rows)
    mask, _ = sampling.kept_mask(logits, *rows, programs_per_row=2)
    assert torch.equal(mask, expected)


# ---- extreme temperatures and non-finite logits -------------------------------------------

@pytest.mark.parametrize("temperature", [TINY, 1e-37, 1e-30])
def test_tiny_temperature_is_the_argmax_with_status_ok(temperature):
    logits = torch.tensor([[1.0, 2.0], [-3e38, 3e38]])
    rows = params(2, 2, temperature=temperature)
    for u in (0.0, 0.5, 0.999):
        tokens, status = sampling.sample(logits, *rows, torch.full((2,), u, dtype=torch.float64))
        assert tokens.tolist() == [1, 1] and status.tolist() == [0, 0]
    # No filter keeps every token, as the reference does (p = 0 ones too); min-p drops them.
    mask, status = sampling.kept_mask(logits, *rows)
    assert mask.all() and status.tolist() == [0, 0]
    mask, _ = sampling.kept_mask(logits, *params(2, 2, temperature=temperature, min_p=0.5))
    assert mask.tolist() == [[False, True], [False, True]]


def test_infinite_temperature_is_uniform_over_the_finite_logits():
    logits = torch.tensor([[0.0, -INF, 5.0]])
    rows = params(1, 3, temperature=INF)
    mask, status = sampling.kept_mask(logits, *params(1, 3, temperature=INF, min_p=0.5))
    assert mask.tolist() == [[True, False, True]] and status.tolist() == [0]
    for u, token in ((0.0, 0), (0.49, 0), (0.5, 2), (0.99, 2)):
        tokens, _ = sampling.sample(logits, *rows, torch.tensor([u], dtype=torch.float64))
        assert tokens.tolist() == [token], u
    probs = softmax.forward(logits, torch.tensor([INF]), False)
    assert probs.tolist() == [[0.5, 0.0, 0.5]]
    # top-p 0.5 of two equal tokens: the first is enough, but ties stay together
    mask, _ = sampling.kept_mask(logits, *params(1, 3, temperature=INF, top_p=0.5))
    assert mask.tolist() == [[True, False, True]]


def test_softmax_limits_have_no_nan():
    x = torch.tensor([[1.0, 2.0, -INF], [-3e38, 3e38, 0.0]])
    for t in (TINY, 1e-30):
        y = softmax.forward(x, torch.full((2,), t), False)
        assert y.tolist() == [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]
    logy = softmax.forward(x, torch.tensor([INF, INF]), True)
    assert logy[0, 2] == -INF and torch.allclose(logy[0, :2], torch.full((2,), -math.log(2)))
    assert torch.allclose(logy[1], torch.full((3,), -math.log(3)))  # x - M overflows: still 0


def test_non_finite_rows_get_their_status_and_no_token():
    logits = torch.randn(5, 70, generator=torch.Generator().manual_seed(5))
    logits[1, 3] = float("nan")
    logits[2, 69] = INF
    logits[3] = -INF
    logits[4, 10] = float("nan")
    logits[4, 11] = INF  # NaN is reported first
    temperature = torch.tensor([0.9, 1.0, 1.0, 0.0, 1.0])
    rows = params(5, 70, temperature=temperature, top_k=10, top_p=0.8)
    good = expected_mask(logits[:1], *[r[:1] for r in rows])
    for programs in (1, 2):
        mask, status = sampling.kept_mask(logits, *rows, programs_per_row=programs)
        assert status.tolist() == [0, 1, 2, 3, 1]
        assert torch.equal(mask[:1], good) and not mask[1:].any()
        tokens, status = sampling.sample(logits, *rows, torch.full((5,), 0.3, dtype=torch.float64),
                                         programs_per_row=programs)
        assert status.tolist() == [0, 1, 2, 3, 1]
        assert tokens[1:].tolist() == [-1] * 4 and bool(good[0, tokens[0]])


# ---- the static-check hook ----------------------------------------------------------------

def kernel_parameters(kernel):
    """(runtime argument names, constexpr names) of a @triton.jit function."""
    names, constexprs = [], []
    for name, parameter in inspect.signature(kernel.fn).parameters.items():
        annotation = parameter.annotation
        is_constexpr = annotation is tl.constexpr or "constexpr" in str(annotation)
        (constexprs if is_constexpr else names).append(name)
    return names, constexprs


TYPE_STRINGS = {"*fp16", "*bf16", "*fp32", "*fp64", "*i8", "*i32", "*i64", "fp32"}


@pytest.mark.parametrize("module,kernel_name", [(softmax, "softmax"), (sampling, "sampling")])
def test_static_configs_are_well_formed(module, kernel_name):
    configs = list(module.static_configs())
    assert configs
    shapes = set()
    for config in configs:
        assert set(config) == {"kernel", "args", "constexprs", "num_warps", "num_stages", "row"}
        names, constexprs = kernel_parameters(config["kernel"])
        assert list(config["args"]) == names  # in order: the hook's user may pass them so
        assert set(config["constexprs"]) == set(constexprs)
        for name, value in config["args"].items():
            assert (isinstance(value, int) and value > 0) or value in TYPE_STRINGS, (name, value)
        assert config["num_warps"] in (1, 2, 4, 8) and config["num_stages"] >= 1
        row = config["row"]
        assert row["kernel"] == kernel_name and row["dtype"] in ("fp16", "bf16", "fp32")
        assert row["programs"] == row["B"] * row["programs_per_row"]
        assert isinstance(row["passes_over_v"], int) and row["counting"]
        shapes.update((s["B"], s["V"], s["dtype"], row["mode"]) for s in row["shapes"])
    modes = {mode for *_, mode in shapes}
    assert len(shapes) == 3 * 2 * 3 * len(modes)  # every shape reaches every launch
    keys = [(id(c["kernel"]), tuple(sorted(c["constexprs"].items())), tuple(c["args"].values()))
            for c in configs]
    assert len(set(keys)) == len(keys)


def test_plan_fills_the_gpu_at_small_batch():
    for B, V, parts in ((1, 128256, 126), (32, 128256, 9), (256, 128256, 2), (1, 32000, 32)):
        p = softmax.plan(B, V, torch.device("cuda"), sms=132)
        assert p.parts == parts and p.chunk % p.block == 0 and (p.parts - 1) * p.chunk < V


def test_softmax_checks_tensor_temperatures_on_the_device():
    import fastrnn
    x = torch.randn(3, 5)
    with pytest.raises(ValueError, match=r"temperature must be > 0.*got -0.5 \(row 1\)"):
        fastrnn.softmax(x, torch.tensor([1.0, -0.5, float("nan")]), backend="triton")
    with pytest.raises(ValueError, match=r"temperature must be > 0.*got nan"):
        fastrnn.softmax(x, float("nan"), backend="triton")
    y = fastrnn.softmax(x, torch.tensor([1.0, INF, 1e-30]), backend="triton")
    assert torch.allclose(y[1], torch.full((5,), 0.2)) and not y.isnan().any()


def test_top_p_threshold_deep_in_a_long_tail():
    # A few likely tokens and a long flat tail: top-p near 1 puts the threshold in the
    # tail, near the bound below which the first histogram lumps tokens together.
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(4, 300, generator=gen) - 12.0
    logits[:, :3] = torch.tensor([4.0, 3.0, 2.0])
    logits[1, 100:200] = -12.0  # a tied tail
    rows = params(4, 300, top_p=torch.tensor([0.9, 0.9999, 0.99999, 1 - 1e-12]),
                  min_p=torch.tensor([0.0, 0.0, 1e-7, 0.0]))
    expected = expected_mask(logits, *rows)
    assert expected.sum(-1).tolist()[2:] == [96, 300]  # thresholds in the tail
    for programs in (1, 3):
        mask, _ = sampling.kept_mask(logits, *rows, programs_per_row=programs)
        assert torch.equal(mask, expected), programs


def test_sampling_sees_the_softmax_probabilities_bit_for_bit():
    # min_p puts the kept floor exactly on the softmax's p_j, then one float above it: the
    # sampling kernel keeps j, then drops it, only if its p_j has the very same bits.
    logits = torch.randn(1, 150, generator=torch.Generator().manual_seed(7)) * 2
    for programs in (1, 3):
        probs = softmax.forward(logits, torch.ones(1), False, programs)[0]
        p_max = probs.max()
        for j in probs.argsort(descending=True)[[1, 5, 40]].tolist():
            min_p = (probs[j] / p_max).reshape(1)
            while (min_p * p_max)[0] < probs[j]:
                min_p = torch.nextafter(min_p, torch.ones(1))
            while (min_p * p_max)[0] > probs[j]:
                min_p = torch.nextafter(min_p, torch.zeros(1))
            assert (min_p * p_max)[0] == probs[j]
            above = min_p
            while (above * p_max)[0] == probs[j]:
                above = torch.nextafter(above, torch.ones(1))
            for floor, kept in ((min_p, True), (above, False)):
                mask, _ = sampling.kept_mask(logits, *params(1, 150, min_p=floor),
                                             programs_per_row=programs)
                assert bool(mask[0, j]) == kept, (programs, j, kept)


def test_rows_with_a_stride_sample_like_contiguous_rows():
    wide = torch.randn(3, 260, generator=torch.Generator().manual_seed(8)) * 3
    logits = wide[:, :130]
    rows = params(3, 130, temperature=0.9, top_k=20, top_p=0.9)
    uniform = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    for programs in (1, 2):
        mask, _ = sampling.kept_mask(logits, *rows, programs_per_row=programs)
        assert torch.equal(mask, expected_mask(logits.contiguous(), *rows))
        tokens, _ = sampling.sample(logits, *rows, uniform, programs_per_row=programs)
        assert torch.equal(tokens, expected_tokens(logits.contiguous(), rows[0], mask, uniform))
