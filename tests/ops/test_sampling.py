"""Sampling: kept sets against the sort-based reference (exact, ties included), draws
against the renormalised distribution (chi-square), seeds, greedy limits, errors.

The Triton kernel runs under the interpreter on tiny rows; the cuda-marked tests repeat
the checks at real vocabulary sizes on a GPU."""
import pytest
import torch

import fastrnn
from fastrnn.ops.sampling import reference, vectorized

# Chi-square tests reject at this p-value: fixed seeds make each test deterministic.
SIGNIFICANCE = 1e-3


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

@pytest.mark.parametrize("ties", [False, True])
def test_cpu_kept_set_equals_sort_reference(ties):
    gen = torch.Generator().manual_seed(1 + ties)
    for V in (1, 2, 7, 100, 1000, 4099):
        logits, *params = random_case(gen, 6, V, ties)
        expected = reference.kept_mask(logits, *params)
        assert torch.equal(backend_mask("reference", logits, params), expected), f"V={V}"


def test_cpu_kept_set_with_only_one_finite_logit_and_greedy_rows():
    logits = torch.full((3, 9), float("-inf"))
    logits[:, 4] = 2.0
    logits[2] = torch.tensor([1.0, 5.0, 5.0, 0.0, 5.0, -1.0, 2.0, 3.0, 4.0])
    params = per_row(3, 9, top_k=3, top_p=0.5, min_p=0.1, temperature=torch.tensor([1.0, 0.7, 0.0]))
    mask = backend_mask("reference", logits, params)
    assert torch.equal(mask, reference.kept_mask(logits, *params))
    assert mask[:2].sum().item() == 2 and mask[:2, 4].all()  # only the finite logit survives
    assert mask[2].nonzero().flatten().tolist() == [1]  # greedy: first of the tied maxima


def test_top_k_keeps_ties_together():
    logits = torch.tensor([[3.0, 1.0, 3.0, 2.0, 2.0, 0.0]])
    for k, kept in ((1, [0, 2]), (2, [0, 2]), (3, [0, 2, 3, 4]), (5, [0, 1, 2, 3, 4])):
        for backend in ("reference",):
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


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=pytest.mark.interpreter)])
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


def expected_distribution(backend):
    return fastrnn.filtered_probs(DRAW_LOGITS[None], **DRAW_FILTERS, backend=backend)[0]


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


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=pytest.mark.interpreter)])
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
@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=pytest.mark.interpreter)])
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
    probs = expected_distribution("triton")
    logits = DRAW_LOGITS.cuda().expand(n, -1)
    tokens = fastrnn.sample(logits, **DRAW_FILTERS, seed=torch.arange(n, device="cuda"))
    assert chi_square_p_value(tokens.cpu(), probs.cpu()) > SIGNIFICANCE
    gen = torch.Generator(device="cuda").manual_seed(1)
    tokens = fastrnn.sample(logits, **DRAW_FILTERS, generator=gen)
    assert chi_square_p_value(tokens.cpu(), probs.cpu()) > SIGNIFICANCE


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
