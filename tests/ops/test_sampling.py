"""Sampling: kept sets against the sort-based reference (exact, ties included), draws
against the renormalised distribution (chi-square), seeds, greedy limits, extreme and
non-finite inputs, errors, on every backend CPU CI can run: the vectorised path
("reference"), the C++ sampler ("ext") and the Triton kernel under the interpreter.

The Triton kernel runs under the interpreter on tiny rows; the cuda-marked tests repeat
the checks at real vocabulary sizes on a GPU."""
import itertools

import pytest
import torch

import fastrnn
from fastrnn.ops.sampling import reference, vectorized

# Chi-square tests reject at this p-value: fixed seeds make each test deterministic.
SIGNIFICANCE = 1e-3
BACKENDS = ["reference", pytest.param("ext", marks=pytest.mark.ext),
            pytest.param("triton", marks=pytest.mark.interpreter)]
CPU_BACKENDS = ["reference", pytest.param("ext", marks=pytest.mark.ext)]


def per_row(B, V, top_k=None, top_p=None, min_p=None, temperature=1.0):
    """Parameters in the per-row form the backend modules take."""
    full = lambda v, dtype: torch.full((B,), v, dtype=dtype)  # noqa: E731
    return (temperature if isinstance(temperature, torch.Tensor) else full(temperature, torch.float32),
            full(V if top_k is None else min(top_k, V), torch.int64),
            full(1.0 if top_p is None else top_p, torch.float64),
            full(0.0 if min_p is None else min_p, torch.float32))


def random_case(gen, B, V, ties):
    if ties:
        logits = torch.randint(-3, 3, (B, V), generator=gen).float()
    else:
        logits = torch.randn(B, V, generator=gen) * (torch.rand((), generator=gen) * 6)
    temperature = torch.rand(B, generator=gen) + 0.3
    top_k = torch.randint(1, V + 1, (B,), generator=gen)
    top_p = torch.rand(B, generator=gen).double() * 0.99 + 0.01
    top_p[0] = 1.0
    min_p = torch.rand(B, generator=gen) * 0.3
    min_p[-1] = 0.0
    return logits, temperature, top_k, top_p, min_p


def backend_mask(backend, logits, params):
    return fastrnn.sampling_mask(logits, *params, backend=backend)


def backend_probs(backend, logits, temperature):
    """The probabilities a backend filters: the reference's (which the vectorised path and
    the C++ sampler reproduce bit for bit), or the Triton softmax the kernel shares."""
    if backend != "triton":
        return reference.probabilities(logits, temperature)
    t = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    return fastrnn.softmax(logits.float(), t, backend=backend)


def reference_on_backend_probs(backend, logits, params):
    """The sort-based kept set computed on the backend's own probabilities (so a test of
    the Triton filters does not hinge on softmax rounding)."""
    temperature, top_k, top_p, min_p = params
    probs = backend_probs(backend, logits, temperature)
    mask = reference.kept_mask_from_probs(probs, top_k, top_p, min_p)
    return torch.where((temperature == 0)[:, None], reference.greedy_mask(logits), mask)


# ---- kept sets: the vectorised CPU path, many random rows -------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("ties", [False, True])
def test_cpu_kept_set_equals_sort_reference(ties, backend):
    gen = torch.Generator().manual_seed(1 + ties)
    for V in (1, 2, 7, 100, 1000, 4099):
        logits, *params = random_case(gen, 6, V, ties)
        expected = reference.kept_mask(logits, *params)
        assert torch.equal(backend_mask(backend, logits, params), expected), f"V={V}"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cpu_kept_set_with_only_one_finite_logit_and_greedy_rows(backend):
    logits = torch.full((3, 9), float("-inf"))
    logits[:, 4] = 2.0
    logits[2] = torch.tensor([1.0, 5.0, 5.0, 0.0, 5.0, -1.0, 2.0, 3.0, 4.0])
    params = per_row(3, 9, top_k=3, top_p=0.5, min_p=0.1, temperature=torch.tensor([1.0, 0.7, 0.0]))
    mask = backend_mask(backend, logits, params)
    assert torch.equal(mask, reference.kept_mask(logits, *params))
    assert mask[:2].sum().item() == 2 and mask[:2, 4].all()  # only the finite logit survives
    assert mask[2].nonzero().flatten().tolist() == [1]  # greedy: first of the tied maxima


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_k_keeps_ties_together(backend):
    logits = torch.tensor([[3.0, 1.0, 3.0, 2.0, 2.0, 0.0]])
    for k, kept in ((1, [0, 2]), (2, [0, 2]), (3, [0, 2, 3, 4]), (5, [0, 1, 2, 3, 4])):
        mask = fastrnn.sampling_mask(logits, top_k=k, backend=backend)
        assert mask[0].nonzero().flatten().tolist() == kept, k


def exact_boundary_top_p(probs, head):
    """A top_p with top_p * Z == mass of the `head` most probable tokens, exactly."""
    total = probs.double().sum().item()
    mass = probs.double().sort(descending=True).values[:head].sum().item()
    candidate = torch.tensor(mass / total, dtype=torch.float64)
    for _ in range(8):
        if candidate.item() * total == mass:
            return candidate.item()
        step = torch.tensor(1.0 if candidate.item() * total < mass else 0.0, dtype=torch.float64)
        candidate = torch.nextafter(candidate, step)
    pytest.skip("no float64 top_p lands exactly on this mass")


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_top_p_boundary(backend):
    logits = torch.tensor([[2.0, 0.5, 1.0, -1.0, 1.5, 0.0, -0.5]])
    probs = backend_probs(backend, logits, torch.ones(1))[0]
    order = probs.sort(descending=True).indices.tolist()
    top_p = exact_boundary_top_p(probs, 2)
    # Mass strictly above the third token equals top_p * Z: it is not kept.
    mask = fastrnn.sampling_mask(logits, top_p=top_p, backend=backend)[0]
    assert sorted(mask.nonzero().flatten().tolist()) == sorted(order[:2])
    # One ulp more and the crossing token is kept.
    above = torch.nextafter(torch.tensor(top_p, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64))
    mask = fastrnn.sampling_mask(logits, top_p=above.item(), backend=backend)[0]
    assert sorted(mask.nonzero().flatten().tolist()) == sorted(order[:3])


# ---- kept sets: the Triton kernel (interpreter, tiny rows) -------------------------------

@pytest.mark.interpreter
@pytest.mark.parametrize("V,ties", [(37, False), (37, True), (1, False), (130, True)])
def test_triton_kept_set_equals_sort_reference(V, ties):
    gen = torch.Generator().manual_seed(V + ties)
    logits, *params = random_case(gen, 3, V, ties)
    params[0][1] = 0.0  # one greedy row
    mask = backend_mask("triton", logits, params)
    assert torch.equal(mask, reference_on_backend_probs("triton", logits, params))


@pytest.mark.interpreter
def test_triton_rows_of_minus_inf_but_one():
    logits = torch.full((2, 11), float("-inf"))
    logits[0, 7], logits[1, 0] = 1.0, -3.0
    params = per_row(2, 11, top_k=4, top_p=0.3, min_p=0.2)
    mask = backend_mask("triton", logits, params)
    assert torch.equal(mask, reference_on_backend_probs("triton", logits, params))
    tokens = fastrnn.sample(logits, *params, seed=torch.tensor([3, 4]), backend="triton")
    assert tokens.tolist() == [7, 0]


# ---- draws --------------------------------------------------------------------------------

def chi_square_p_value(tokens, probs):
    """p-value of the draws `tokens` under `probs` (zero-probability tokens must not occur)."""
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    support = probs > 0
    assert counts[~support].sum() == 0, "drew a token outside the kept set"
    expected = probs[support].double() * tokens.numel()
    statistic = ((counts[support] - expected) ** 2 / expected).sum()
    dof = int(support.sum()) - 1
    return torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), statistic / 2).item()


DRAW_LOGITS = torch.tensor([1.0, 0.2, 0.5, -0.3, 0.9, -2.0, 0.0])
DRAW_FILTERS = dict(temperature=0.9, top_k=5, top_p=0.9, min_p=0.1)


def expected_distribution(backend, device="cpu"):
    return fastrnn.filtered_probs(DRAW_LOGITS[None].to(device), **DRAW_FILTERS, backend=backend)[0]


def test_cpu_draws_follow_filtered_distribution():
    n = 4000
    rows = DRAW_LOGITS.expand(n, -1)
    probs = expected_distribution("reference")
    assert torch.equal(probs > 0, reference.kept_mask(DRAW_LOGITS[None], *per_row(
        1, 7, 5, 0.9, 0.1, 0.9))[0])
    by_seed = fastrnn.sample(rows, **DRAW_FILTERS, seed=torch.arange(n), backend="reference")
    assert chi_square_p_value(by_seed, probs) > SIGNIFICANCE
    gen = torch.Generator().manual_seed(7)
    by_gen = fastrnn.sample(rows, **DRAW_FILTERS, generator=gen, backend="reference")
    assert chi_square_p_value(by_gen, probs) > SIGNIFICANCE


@pytest.mark.interpreter
@pytest.mark.slow  # about a minute under the interpreter
def test_triton_draws_follow_filtered_distribution():
    n = 400
    probs = expected_distribution("triton")
    tokens = fastrnn.sample(DRAW_LOGITS.expand(n, -1), **DRAW_FILTERS, seed=torch.arange(n),
                            backend="triton")
    assert chi_square_p_value(tokens, probs) > SIGNIFICANCE


def test_chi_square_rejects_a_wrong_distribution():
    # The test has power: draws from the unfiltered softmax fail, and so do draws from the
    # kept set at the wrong temperature.
    n = 4000
    tokens = torch.multinomial(torch.softmax(DRAW_LOGITS / 0.9, -1), n, replacement=True,
                               generator=torch.Generator().manual_seed(0))
    probs = expected_distribution("reference")
    with pytest.raises(AssertionError, match="outside the kept set"):
        chi_square_p_value(tokens, probs)
    kept = probs > 0
    inside = tokens[kept[tokens]]
    wrong = torch.where(kept, torch.softmax(DRAW_LOGITS / 0.5, -1), 0.0)
    wrong /= wrong.sum()
    assert chi_square_p_value(inside, wrong) < SIGNIFICANCE


def test_every_draw_lies_in_kept_set():
    gen = torch.Generator().manual_seed(5)
    for ties in (False, True):
        logits, *params = random_case(gen, 64, 50, ties)
        mask = reference.kept_mask(logits, *params)
        tokens = fastrnn.sample(logits, *params, seed=torch.arange(64), backend="reference")
        assert mask[torch.arange(64), tokens].all()


def test_same_seed_same_tokens_different_seeds_different_streams():
    logits = torch.zeros(64, 1000)  # flat: a collision of two streams is negligible
    a = fastrnn.sample(logits, seed=torch.arange(64))
    b = fastrnn.sample(logits, seed=torch.arange(64))
    c = fastrnn.sample(logits, seed=torch.arange(64) + 1000)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len(set(a.tolist())) > 32  # rows with different seeds draw differently
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(fastrnn.sample(logits, generator=g1), fastrnn.sample(logits, generator=g2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_top_p_top_k_one_and_zero_temperature_give_argmax(backend):
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(4, 23, generator=gen)
    argmax = logits.argmax(-1)
    seed = torch.arange(4)
    for filters in (dict(top_p=1e-9), dict(top_k=1), dict(temperature=0.0)):
        assert torch.equal(fastrnn.sample(logits, **filters, seed=seed, backend=backend), argmax)


def test_greedy_ties_go_to_lowest_index():
    logits = torch.tensor([[0.0, 2.0, 2.0], [5.0, 5.0, 5.0]])
    assert fastrnn.sample(logits, temperature=0.0).tolist() == [1, 0]


def test_one_dimensional_logits_give_a_scalar():
    token = fastrnn.sample(torch.tensor([0.0, 9.0, 1.0]), temperature=0)
    assert token.dim() == 0 and token.item() == 1


# ---- errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(temperature=-0.5), ValueError, "temperature must be >= 0"),
    (dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), ValueError, r"top_p must be in \(0, 1\]"),
    (dict(top_k=-1), ValueError, "top_k must be >= 0"),
    (dict(top_k=2.5), TypeError, "top_k must be an int"),
    (dict(min_p=1.5), ValueError, r"min_p must be in \[0, 1\]"),
    (dict(temperature=torch.ones(3)), ValueError, r"shape \(2,\)"),
])
def test_bad_parameters_raise(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fastrnn.sample(torch.randn(2, 5), **kwargs)


@pytest.mark.parametrize("bad,match", [(float("nan"), "contains NaN"), (float("inf"), r"contains \+inf")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_logits_are_detected(bad, match, backend):
    logits = torch.randn(3, 6)
    logits[1, 2] = bad
    with pytest.raises(ValueError, match=f"row 1 {match}"):
        fastrnn.sample(logits, backend=backend)


def test_bad_logits_raise():
    with pytest.raises(ValueError, match="1-D"):
        fastrnn.sample(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="float16"):
        fastrnn.sample(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="at least one token"):
        fastrnn.sample(torch.randn(2, 0))
    with pytest.raises(ValueError, match="all -inf"):
        fastrnn.sample(torch.full((1, 4), float("-inf")))


# ---- GPU ---------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("V", [32000, 128256, 1000])
@pytest.mark.parametrize("ties", [False, True])
def test_cuda_kept_set_equals_sort_reference(V, ties):
    gen = torch.Generator().manual_seed(V)
    logits, *params = random_case(gen, 16, V, ties)
    logits, params = logits.cuda(), [p.cuda() for p in params]
    for dtype in (torch.float32, torch.bfloat16):
        mask = backend_mask("triton", logits.to(dtype), params)
        assert torch.equal(mask, reference_on_backend_probs("triton", logits.to(dtype), params))


@pytest.mark.cuda
def test_cuda_draws_follow_filtered_distribution():
    n = 100000
    probs = expected_distribution("triton", "cuda")
    logits = DRAW_LOGITS.cuda().expand(n, -1)
    tokens = fastrnn.sample(logits, **DRAW_FILTERS, seed=torch.arange(n, device="cuda"))
    assert chi_square_p_value(tokens.cpu(), probs.cpu()) > SIGNIFICANCE
    gen = torch.Generator(device="cuda").manual_seed(1)
    tokens = fastrnn.sample(logits, **DRAW_FILTERS, generator=gen)
    assert chi_square_p_value(tokens.cpu(), probs.cpu()) > SIGNIFICANCE


@pytest.mark.cuda
def test_cuda_sampling_does_not_synchronise():
    B = 4
    logits = torch.randn(B, 1000, device="cuda")
    params = dict(temperature=torch.full((B,), 0.8, device="cuda"),
                  top_k=torch.full((B,), 50, device="cuda"),
                  top_p=torch.full((B,), 0.9, dtype=torch.float64, device="cuda"), min_p=0.05)
    seeds = torch.arange(B, device="cuda")
    fastrnn.sample(logits, **params, seed=seeds)  # compiles the kernels
    fastrnn.check_errors()
    bad = logits.clone()
    bad[1, 3] = float("nan")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fastrnn.sample(logits, **params, seed=seeds)
        fastrnn.sample(logits, temperature=0.7, top_p=0.9, seed=3)
        fastrnn.sampling_mask(logits, **params)
        fastrnn.sample(bad, **params, seed=seeds)  # the error is deferred, not raised here
    finally:
        torch.cuda.set_sync_debug_mode(0)
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        fastrnn.check_errors()


# ---- the CPU fast path (candidates per row) and its fallback ---------------------------------

def fast_path_rows(logits, params):
    """Which rows the vectorised path decides on its candidates (the rest fall back)."""
    temperature, top_k, top_p, min_p = params
    probs = reference.probabilities(logits, temperature)
    return vectorized._thresholds(probs, temperature == 0, top_k, top_p, min_p)[1]


def full_row_tokens(logits, params, uniform):
    """The draw over the whole row (the fallback), for the same uniforms."""
    temperature, top_k, top_p, min_p = params
    probs = reference.probabilities(logits, temperature)
    bits = vectorized._kept_threshold(probs, torch.where(temperature == 0, 1, top_k), top_p, min_p)
    tokens = vectorized._full_row_draw(probs, bits, uniform)
    return torch.where(temperature == 0, logits.argmax(-1), tokens)


def check_fast_path(logits, params, expect_fast=None):
    uniform = torch.rand(logits.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    mask, _ = vectorized.kept_mask(logits, *params)
    assert torch.equal(mask, reference.kept_mask(logits, *params))
    tokens, _ = vectorized.sample(logits, *params, uniform)
    assert torch.equal(tokens, full_row_tokens(logits, params, uniform))
    assert mask[torch.arange(logits.shape[0]), tokens].all()
    if expect_fast is not None:
        assert fast_path_rows(logits, params).tolist() == expect_fast


def test_fast_path_top_p_alone_and_top_k_alone():
    gen = torch.Generator().manual_seed(21)
    logits = torch.randn(4, 32000, generator=gen) * 3
    check_fast_path(logits, per_row(4, 32000, top_p=0.9), [True] * 4)
    check_fast_path(logits, per_row(4, 32000, top_k=50), [True] * 4)
    check_fast_path(logits, per_row(4, 32000, top_k=50, top_p=0.9, min_p=0.05), [True] * 4)
    check_fast_path(logits, per_row(4, 32000, min_p=0.05), [True] * 4)


def test_flat_distributions_fall_back():
    gen = torch.Generator().manual_seed(22)
    logits = torch.randn(3, 20000, generator=gen) * 0.1  # top-p 0.9 needs ~18000 tokens
    check_fast_path(logits, per_row(3, 20000, top_p=0.9), [False] * 3)
    check_fast_path(logits, per_row(3, 20000), [False] * 3)  # no filter: the whole row
    check_fast_path(torch.zeros(2, 5000), per_row(2, 5000, top_k=3, top_p=0.5), [False] * 2)


def test_ties_at_the_candidate_boundary():
    # The k-th value ties with tokens beyond the k + 1 candidates: the fallback decides.
    logits = torch.zeros(2, 300)
    logits[:, :10] = 5.0
    logits[:, 10:40] = 2.0  # top-k 20 cuts this tie group of 30
    logits[1, 250:260] = 2.0  # and a few more far away
    check_fast_path(logits, per_row(2, 300, top_k=20), [False, False])
    check_fast_path(logits, per_row(2, 300, top_k=20, top_p=0.99), [False, False])
    check_fast_path(logits, per_row(2, 300, top_k=10), [True, True])  # group of 5.0 ends at 10
    check_fast_path(logits, per_row(2, 300, top_k=7, top_p=0.5))
    # top-p through tie groups on exponent-histogram candidates
    check_fast_path(logits, per_row(2, 300, top_p=0.95))
    check_fast_path(logits, per_row(2, 300, top_p=0.3, min_p=0.01))


def test_fast_path_per_row_parameters_with_greedy_rows():
    gen = torch.Generator().manual_seed(23)
    B, V = 12, 4099
    logits = torch.randn(B, V, generator=gen) * 4
    logits[3, :] = torch.randint(-2, 2, (V,), generator=gen).float()  # heavy ties
    temperature = torch.rand(B, generator=gen) + 0.3
    temperature[::4] = 0.0  # greedy rows in every group
    top_k = torch.tensor([V, 50, V, 3, 2000, 1, V, 40, V, V, 100, 7])
    top_p = torch.tensor([0.9, 1.0, 0.5, 0.8, 1.0, 0.7, 1.0, 0.95, 0.2, 1.0, 0.99, 0.6], dtype=torch.float64)
    min_p = torch.tensor([0.0, 0.05, 0.0, 0.1, 0.0, 0.0, 0.02, 0.0, 0.3, 0.0, 0.0, 0.0])
    check_fast_path(logits, (temperature, top_k, top_p, min_p))
    for seed in range(5):
        uniform = torch.rand(B, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        tokens, _ = vectorized.sample(logits, temperature, top_k, top_p, min_p, uniform)
        assert torch.equal(tokens[::4], logits[::4].argmax(-1))
        assert torch.equal(tokens, full_row_tokens(logits, (temperature, top_k, top_p, min_p), uniform))


# ---- issue 15, case 2: extreme temperatures -------------------------------------------------

def low_precision_dtypes(backend):
    # The interpreter has no bfloat16.
    return (torch.float32, torch.float16) if backend == "triton" else \
        (torch.float32, torch.float16, torch.bfloat16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_temperature_is_the_argmax(backend):
    # 1 / T overflows float32 for T < 1.18e-38: the limit T -> 0 is the argmax.
    for dtype in low_precision_dtypes(backend):
        logits = torch.tensor([[1.0, 2.0], [3.0, -1.0], [2.0, 2.0]], dtype=dtype)
        for T in (1e-40, 1e-38, 5e-39):
            tokens = fastrnn.sample(logits, temperature=T, seed=0, backend=backend)
            assert tokens.tolist() == [1, 0, 0], (dtype, T)  # ties go to the lowest index
            mask = fastrnn.sampling_mask(logits, temperature=T, backend=backend)
            assert mask.tolist() == [[False, True], [True, False], [True, False]], (dtype, T)
            probs = fastrnn.filtered_probs(logits, temperature=T, backend=backend)
            assert probs.tolist() == [[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], (dtype, T)


@pytest.mark.parametrize("backend", BACKENDS)
def test_smallest_normal_temperature_does_not_overflow(backend):
    # Just above the greedy cut, exp((l - max) / T) is 1 at the maxima and 0 elsewhere:
    # the two tied maxima share the mass.
    logits = torch.tensor([[2.0, 1.0, 2.0, -5.0]])
    T = 2e-38
    probs = fastrnn.filtered_probs(logits, temperature=T, backend=backend)
    assert probs.tolist() == [[0.5, 0.0, 0.5, 0.0]]
    tokens = fastrnn.sample(logits.expand(64, -1), temperature=T, seed=torch.arange(64), backend=backend)
    assert set(tokens.tolist()) == {0, 2}


@pytest.mark.parametrize("backend", BACKENDS)
def test_infinite_temperature_is_uniform_over_finite_logits(backend):
    logits = torch.tensor([[1.0, float("-inf"), 30.0, -4.0]])
    inf = float("inf")
    probs = fastrnn.filtered_probs(logits, temperature=inf, backend=backend)
    assert torch.equal(probs, torch.tensor([[1 / 3, 0.0, 1 / 3, 1 / 3]]))
    # Every finite token has p = max(p): min-p keeps them all, and only them.
    mask = fastrnn.sampling_mask(logits, temperature=inf, min_p=0.5, backend=backend)
    assert mask.tolist() == [[True, False, True, True]]
    n = 60 if backend == "triton" else 3000
    tokens = fastrnn.sample(logits.expand(n, -1), temperature=inf, seed=torch.arange(n),
                            backend=backend)
    assert chi_square_p_value(tokens, probs[0]) > SIGNIFICANCE


@pytest.mark.parametrize("backend", BACKENDS)
def test_invalid_temperatures_raise_naming_them(backend):
    logits = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    for bad in (-1.0, float("nan"), -float("inf"), torch.tensor([1.0, float("nan")]),
                torch.tensor([0.5, -0.1])):
        with pytest.raises(ValueError, match="temperature must be >= 0"):
            fastrnn.sample(logits, temperature=bad, backend=backend)
        with pytest.raises(ValueError, match="temperature must be >= 0"):
            fastrnn.sampling_mask(logits, temperature=bad, backend=backend)


# ---- issue 15, case 3: non-finite logits ------------------------------------------------------

BAD_ROWS = {
    "contains NaN": [float("nan"), 1.0, 0.0],
    r"contains \+inf": [0.0, float("inf"), 1.0],
    r"has no finite logit \(all -inf\)": [float("-inf")] * 3,
}


def filter_combinations(backend):
    """temperature x top_k x top_p x min_p, off or on (a few under the interpreter)."""
    grid = list(itertools.product((0.0, 0.7), (None, 2), (None, 0.5), (None, 0.1)))
    return grid[::5] if backend == "triton" else grid


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_rows_raise_the_documented_error_for_every_filter(backend):
    for reason, bad in BAD_ROWS.items():
        logits = torch.tensor([[0.5, 1.0, 2.0], bad, [1.0, 1.0, 0.0]])
        for T, k, p, m in filter_combinations(backend):
            filters = dict(temperature=T, top_k=k, top_p=p, min_p=m)
            with pytest.raises(ValueError, match=f"row 1 {reason}"):
                fastrnn.sample(logits, **filters, seed=0, backend=backend)
            with pytest.raises(ValueError, match=f"row 1 {reason}"):
                fastrnn.sampling_mask(logits, **filters, backend=backend)


def test_issue_examples_of_non_finite_logits():
    with pytest.raises(ValueError, match="row 0 contains NaN"):
        fastrnn.sample(torch.tensor([[float("nan"), 1.0]]), temperature=0.0)
    with pytest.raises(ValueError, match=r"row 0 has no finite logit"):
        fastrnn.sample(torch.full((1, 3), float("-inf")), top_p=0.5, seed=0)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"] + ["reference"])
def test_backend_marks_bad_rows_and_keeps_good_ones(backend):
    """The backend interface itself: token -1 and an all-False mask row on bad rows, the
    right answer on the others (op.py raises from these statuses)."""
    if backend == "triton":
        from fastrnn.ops.sampling import triton as module
    elif backend == "ext":
        from fastrnn.ops.sampling import ext as module
    else:
        module = vectorized
    logits = torch.tensor([[0.5, 1.0, 2.0], BAD_ROWS["contains NaN"],
                           BAD_ROWS[r"contains \+inf"], [float("-inf")] * 3, [3.0, 1.0, 3.0]])
    params = per_row(5, 3, top_p=0.5, temperature=torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]))
    tokens, status = module.sample(logits, *params, torch.full((5,), 0.5, dtype=torch.float64))
    assert status.tolist() == [0, 1, 2, 3, 0]
    assert tokens.tolist() == [2, -1, -1, -1, 0]
    mask, status = module.kept_mask(logits, *params)
    assert status.tolist() == [0, 1, 2, 3, 0]
    assert mask[1:4].sum() == 0 and mask[0].tolist() == [False, False, True]


# ---- issue 15, case 4: seeds -----------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_scalar_seed_gives_independent_reproducible_rows(backend):
    n = 80 if backend == "triton" else 4000
    rows = DRAW_LOGITS.expand(n, -1)
    tokens = fastrnn.sample(rows, **DRAW_FILTERS, seed=1234, backend=backend)
    assert torch.equal(tokens, fastrnn.sample(rows, **DRAW_FILTERS, seed=1234, backend=backend))
    # Independent rows follow the filtered distribution; one shared draw would not.
    assert chi_square_p_value(tokens, expected_distribution(backend)) > SIGNIFICANCE
    # Row i's draw comes from (seed, i): the first rows of a bigger batch draw the same.
    assert torch.equal(fastrnn.sample(rows[:5], **DRAW_FILTERS, seed=1234, backend=backend), tokens[:5])


def test_issue_example_of_one_scalar_seed():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(1, 50, generator=gen)
    tokens = fastrnn.sample(logits.expand(400, -1), temperature=0.8, top_k=5, seed=1234)
    probs = fastrnn.filtered_probs(logits, temperature=0.8, top_k=5)[0]
    agree = (tokens[:, None] == tokens[None, :]).double().mean().item()
    assert abs(agree - (probs.double() ** 2).sum().item()) < 0.05  # not 1.0
    assert chi_square_p_value(tokens, probs) > SIGNIFICANCE


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_row_seeds_do_not_depend_on_the_batch(backend):
    gen = torch.Generator().manual_seed(8)
    B, V = (6, 40) if backend == "triton" else (64, 300)
    logits, *params = random_case(gen, B, V, ties=False)
    seeds = torch.randint(0, 2 ** 62, (B,), generator=gen)
    whole = fastrnn.sample(logits, *params, seed=seeds, backend=backend)
    for rows in (torch.randperm(B, generator=gen)[: B // 2], torch.arange(B).flip(0), torch.tensor([3])):
        part = fastrnn.sample(logits[rows], *[p[rows] for p in params], seed=seeds[rows], backend=backend)
        assert torch.equal(part, whole[rows])


# ---- the C++ sampler against the sort-based reference ---------------------------------------

ext = pytest.mark.ext


def inverse_cdf_oracle(logits, params, uniform):
    """The documented draw, written out: over the reference's kept set in index order, the
    first token whose float64 running mass exceeds u * (kept mass)."""
    temperature = params[0]
    probs = reference.probabilities(logits, temperature)
    weight = torch.where(reference.kept_mask(logits, *params), probs.double(), 0.0)
    running = weight.cumsum(-1)
    token = torch.searchsorted(running, (uniform * running[:, -1])[:, None], right=True)[:, 0]
    last = torch.where(weight > 0, torch.arange(logits.shape[1]), -1).amax(-1)
    token = torch.minimum(token, last)
    return torch.where(temperature == 0, logits.argmax(-1), token)


@ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_ext_kept_sets_and_tokens_equal_the_reference(dtype):
    from fastrnn.ops.sampling import ext as sampler
    gen = torch.Generator().manual_seed(31)
    for V in (1, 3, 64, 1000, 5003):
        for ties in (False, True):
            logits, *params = random_case(gen, 12, V, ties)
            logits = logits.to(dtype)
            params[0][2] = 0.0  # a greedy row
            logits[4, : V // 2] = float("-inf")  # a row half -inf
            mask, status = sampler.kept_mask(logits, *params)
            assert status.eq(0).all()
            assert torch.equal(mask, reference.kept_mask(logits, *params)), (V, ties)
            uniform = torch.rand(12, dtype=torch.float64, generator=gen)
            tokens, _ = sampler.sample(logits, *params, uniform)
            assert torch.equal(tokens, inverse_cdf_oracle(logits, params, uniform)), (V, ties)
            assert torch.equal(tokens, vectorized.sample(logits, *params, uniform)[0])


@ext
@pytest.mark.parametrize("V", [32000, 128256])
def test_ext_kept_sets_at_vocabulary_sizes(V):
    from fastrnn.ops.sampling import ext as sampler
    gen = torch.Generator().manual_seed(V)
    logits = torch.randn(8, V, generator=gen) * torch.tensor([0.1, 1, 3, 8, 1, 3, 0.5, 2])[:, None]
    temperature = torch.tensor([1.0, 0.8, 0.7, 1.3, 1.0, 0.0, float("inf"), 0.9])
    top_k = torch.tensor([V, 50, V, 1000, 40000, V, V, 7]).clamp_max(V)
    top_p = torch.tensor([0.9, 1.0, 0.95, 0.5, 0.99, 0.9, 0.3, 1.0], dtype=torch.float64)
    min_p = torch.tensor([0.0, 0.0, 0.05, 0.0, 0.01, 0.0, 0.0, 0.2])
    params = (temperature, top_k, top_p, min_p)
    mask, _ = sampler.kept_mask(logits, *params)
    assert torch.equal(mask, reference.kept_mask(logits, *params))
    uniform = torch.rand(8, dtype=torch.float64, generator=gen)
    assert torch.equal(sampler.sample(logits, *params, uniform)[0],
                       inverse_cdf_oracle(logits, params, uniform))


@ext
def test_ext_strided_rows_and_threads_change_nothing():
    from fastrnn.ops.sampling import ext as sampler
    gen = torch.Generator().manual_seed(5)
    wide = torch.randn(16, 2 * 700, generator=gen) * 2
    logits = wide[:, ::2]  # non-unit stride along V
    _, *params = random_case(gen, 16, 700, ties=False)
    uniform = torch.rand(16, dtype=torch.float64, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sampler.sample(logits, *params, uniform)[0], sampler.kept_mask(logits, *params)[0]
        torch.set_num_threads(2)
        two = sampler.sample(logits, *params, uniform)[0], sampler.kept_mask(logits, *params)[0]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    assert torch.equal(one[1], reference.kept_mask(logits.contiguous(), *params))
    assert torch.equal(one[0], inverse_cdf_oracle(logits.contiguous(), params, uniform))


@ext
def test_ext_draws_follow_filtered_distribution():
    n = 4000
    probs = expected_distribution("ext")
    tokens = fastrnn.sample(DRAW_LOGITS.expand(n, -1), **DRAW_FILTERS, seed=torch.arange(n), backend="ext")
    assert chi_square_p_value(tokens, probs) > SIGNIFICANCE


@ext
def test_ext_is_the_automatic_cpu_backend():
    from fastrnn import backends
    assert backends.choose("cpu", "sampling") == "ext"
    assert backends.choose("cpu", "sampling", ("fp64",)) == "ext"


def test_vectorised_path_is_the_fallback_without_the_extension(monkeypatch):
    from fastrnn import backends
    monkeypatch.setattr(backends, "ext_module", lambda: None)
    backends.ext_available.cache_clear()
    try:
        assert backends.choose("cpu", "sampling") == "reference"
    finally:
        backends.ext_available.cache_clear()


# ---- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(top_p=float("nan")), ValueError, r"top_p must be in \(0, 1\]"),
    (dict(top_p=torch.tensor([0.5, 0.0])), ValueError, r"top_p must be in \(0, 1\].*row 1"),
    (dict(top_k=torch.tensor([3, -1])), ValueError, r"top_k must be >= 0.*row 1"),
    (dict(top_k=torch.tensor([2.0, 3.0])), TypeError, "top_k must be an integer tensor"),
    (dict(top_k=True), TypeError, "top_k must be a number"),
    (dict(min_p=-0.1), ValueError, r"min_p must be in \[0, 1\]"),
    (dict(min_p=torch.tensor([0.1, float("nan")])), ValueError, r"min_p must be in \[0, 1\]"),
    (dict(top_k=torch.tensor([1, 2, 3])), ValueError, r"top_k must be a scalar or have shape \(2,\)"),
    (dict(seed=torch.tensor([1, 2, 3])), ValueError, r"seed must be an int or have shape \(2,\)"),
    (dict(seed=1.5), TypeError, "seed must be an int"),
    (dict(seed=2 ** 64), ValueError, r"seed must lie in \[-2\*\*63, 2\*\*63\)"),
    (dict(seed=1, generator=torch.Generator()), ValueError, "generator or seeds"),
])
def test_more_bad_parameters_raise(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fastrnn.sample(torch.randn(2, 5), **kwargs)


def test_top_k_zero_disables_top_k():
    logits = torch.randn(3, 20)
    assert fastrnn.sampling_mask(logits, top_k=0).all()
    assert torch.equal(fastrnn.sampling_mask(logits, top_k=0, top_p=0.5),
                       fastrnn.sampling_mask(logits, top_p=0.5))


@ext
def test_ext_ops_pass_opcheck():
    logits = torch.randn(3, 50)
    params = per_row(3, 50, top_k=5, top_p=0.9, min_p=0.05, temperature=0.7)
    uniform = torch.rand(3, dtype=torch.float64)
    import fastrnn.ops.sampling.ext  # noqa: F401  (registers the fake implementations)
    torch.library.opcheck(torch.ops.fastrnn.ext_sampling_forward.default, (logits, *params, uniform))
    torch.library.opcheck(torch.ops.fastrnn.ext_sampling_mask.default, (logits, *params))
