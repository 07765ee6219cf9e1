"""Generation for recurrent language models: greedy, sampling, beam search.

The model protocol:

    logits, state = model(tokens, state)

- tokens: (B, T) int64 token ids; the loop first feeds each prompt once (T = prompt
  length), then one token per step (T = 1).
- state: None on the first call (the model starts from its own initial state), then
  whatever the model returned last: a Tensor, or a tuple/list (nested or not) of Tensors,
  each holding the batch along dimension `state_batch_dim` (default 1, the layout of
  nn.LSTM's (h, c) and nn.GRU's h: (num_layers, B, H)). The loop only ever selects along
  that dimension (to drop, repeat or reorder rows for beams); it never recomputes a
  state from earlier tokens.
- logits: (B, T, V) floating point; only the last position is used.

Example, with an nn.LSTM language model:

    class LM(torch.nn.Module):
        def __init__(self, V, H):
            super().__init__()
            self.emb, self.rnn = torch.nn.Embedding(V, H), fastrnn.LSTM(H, H, batch_first=True)
            self.head = torch.nn.Linear(H, V)
        def forward(self, tokens, state):
            y, state = self.rnn(self.emb(tokens), state)
            return self.head(y), state

    out = fastrnn.generate(LM(100, 64), torch.tensor([[1, 2, 3]]), max_new_tokens=20,
                           do_sample=True, top_p=0.9, seed=0)
"""
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import Tensor

from fastrnn import errors
from fastrnn.ops.sampling.op import prepared_sampler, report_status, row_seeds, uniforms_from_seeds
from fastrnn.ops.sampling.reference import status as logits_status
from fastrnn.ops.softmax.op import log_softmax

# Added to a row's seed once per step, so each step draws fresh but reproducible numbers.
_STEP_SEED_STRIDE = 0x632BE59BD9B4E01
EARLY_STOPPING = (True, False, "never")


def _fail(message: str, exc=ValueError):
    raise exc(f"fastrnn.generate: {message}")


def map_state(state, fn: Callable[[Tensor], Tensor]):
    """Apply fn to every tensor of a state (Tensor, or nested tuples/lists of them)."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(s, fn) for s in state)
    _fail(f"state must be a Tensor or a tuple/list of Tensors, got {type(state).__name__}", TypeError)


def _cat_states(states: list, dim: int):
    first = states[0]
    if isinstance(first, Tensor):
        return torch.cat(states, dim=dim)
    return type(first)(_cat_states([s[i] for s in states], dim) for i in range(len(first)))


def _last_logits(model, tokens: Tensor, state):
    out = model(tokens, state)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        _fail("model(tokens, state) must return (logits, state)", TypeError)
    logits, state = out
    if not isinstance(logits, Tensor) or logits.dim() != 3 or logits.shape[:2] != tokens.shape:
        _fail(f"model must return logits of shape (B, T, V) = ({tokens.shape[0]}, {tokens.shape[1]},"
              f" V), got {tuple(logits.shape) if isinstance(logits, Tensor) else type(logits)}")
    if not logits.dtype.is_floating_point:
        _fail(f"model must return floating-point logits, got {logits.dtype}", TypeError)
    return logits[:, -1].float(), state


def _prefill(model, prompts: List[Tensor], state_batch_dim: int):
    """Feed the prompts; equal lengths go in one batch, unequal ones one prompt at a time
    (never padded, so no prompt sees another's tokens)."""
    if len({p.shape[0] for p in prompts}) == 1:
        return _last_logits(model, torch.stack(prompts), None)
    outs = [_last_logits(model, p[None], None) for p in prompts]
    return torch.cat([o[0] for o in outs]), _cat_states([o[1] for o in outs], state_batch_dim)


def _as_prompts(input_ids) -> List[Tensor]:
    if isinstance(input_ids, Tensor):
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            _fail(f"input_ids must be (B, T) with T >= 1, got {tuple(input_ids.shape)}")
        prompts = list(input_ids)
    else:
        prompts = list(input_ids)
    if not prompts:
        _fail("give at least one prompt")
    for p in prompts:
        if not isinstance(p, Tensor) or p.dim() != 1 or p.numel() == 0:
            _fail("each prompt must be a non-empty 1-D tensor of token ids")
        if p.dtype.is_floating_point or p.dtype == torch.bool or p.is_complex():
            _fail(f"token ids must be integers, got {p.dtype}", TypeError)
        if p.device != prompts[0].device:
            _fail(f"all prompts must be on one device, got {p.device} and {prompts[0].device}")
    # Checked before the model sees them: a negative id would index from the end.
    for i, p in enumerate(prompts):
        if int(p.min()) < 0:
            _fail(f"prompt {i} holds token id {int(p.min())}; ids must lie in [0, V)")
    return [p.long() for p in prompts]


def _check_vocabulary(prompts: List[Tensor], V: int, eos: List[int], num_beams: int):
    """Checks that need V, the size of the model's logits (known after the prefill)."""
    for i, p in enumerate(prompts):
        if int(p.max()) >= V:
            _fail(f"prompt {i} holds token id {int(p.max())}; ids must lie in [0, V), V = {V}")
    for e in eos:
        if not 0 <= e < V:
            _fail(f"eos_token_id {e} lies outside [0, V), V = {V}")
    if num_beams > V:
        _fail(f"num_beams = {num_beams} exceeds the {V} tokens a beam can continue with")


def _apply_repetition_penalty(scores: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """Each token already in the row's sequence, once: negative scores times penalty,
    others divided by it (the CTRL / Hugging Face rule).

    scores (B, V) float; seen (B, V) bool, True for every token in the row's own prompt
    and output so far (nothing from other rows, so no batch padding can count as seen).
    """
    if penalty == 1.0:
        return scores
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


def _seen_tokens(prompts: List[Tensor], V: int) -> Tensor:
    """(B, V) bool: the tokens of each prompt."""
    seen = torch.zeros(len(prompts), V, dtype=torch.bool, device=prompts[0].device)
    for i, p in enumerate(prompts):
        seen[i, p] = True
    return seen


def _processed_scores(logits, seen, step, repetition_penalty, min_new_tokens, eos):
    scores = _apply_repetition_penalty(logits, seen, repetition_penalty)
    if step < min_new_tokens and eos:
        # Out of place: scores may be the model's own output (no penalty), never written.
        eos_ids = torch.tensor(eos, dtype=torch.long, device=scores.device)
        scores = scores.index_fill(1, eos_ids, float("-inf"))
    return scores


def _pad_rows(rows: List[Tensor], pad: int) -> Tensor:
    width = max(r.shape[0] for r in rows)
    out = torch.full((len(rows), width), pad, dtype=torch.long, device=rows[0].device)
    for i, r in enumerate(rows):
        out[i, :r.shape[0]] = r
    return out


def generate(model, input_ids: Union[Tensor, Sequence[Tensor]], max_new_tokens: int, *,
             min_new_tokens: int = 0, do_sample: bool = False, temperature=1.0, top_k=None,
             top_p=None, min_p=None, repetition_penalty: float = 1.0, num_beams: int = 1,
             length_penalty: float = 1.0, early_stopping: Union[bool, str] = False,
             eos_token_id: Union[int, Sequence[int], None] = None, pad_token_id: Optional[int] = None,
             generator: Optional[torch.Generator] = None, seed=None, state_batch_dim: int = 1,
             backend: Optional[str] = None, cuda_graph: bool = False) -> Tensor:
    """Continue each prompt with up to max_new_tokens tokens from a recurrent LM.

    A prompt's output does not depend on the other prompts in the batch, whatever the
    options: prompts are never padded into one another (see _prefill), each row's
    repetition penalty sees only its own tokens, and with per-row seeds each row draws
    from its own stream.

    Args:
        model: follows the protocol in this module's docstring.
        input_ids: (B, T) integer prompts, or a list of 1-D prompts of any lengths; ids
            must lie in [0, V), V the size of the model's logits.
        max_new_tokens / min_new_tokens: bounds on new tokens (EOS is barred before the min).
        do_sample: draw with fastrnn.sample (temperature, top_k, top_p, min_p, as there);
            otherwise greedy (argmax, ties to the lowest id), or beam search if num_beams > 1.
        repetition_penalty: > 0; 1 disables (see _apply_repetition_penalty). Greedy and
            sampling apply it (and the min_new_tokens bar) to the logits; beam search to the
            log-probabilities, after log_softmax and without renormalising. Both are Hugging
            Face's rules (its processors see the logits in _sample, the log-probabilities in
            _beam_search).
        num_beams: 1 <= num_beams <= V.
        length_penalty, early_stopping: beam search exactly as Hugging Face's generate
            (transformers 5.25; the docstring of this module's _beam_search lists the
            rules). A finished hypothesis scores sum(log p) / new_tokens ** length_penalty
            (its EOS counted); each step keeps max(2, 1 + len(eos)) * num_beams candidates,
            and only an EOS candidate among the first num_beams finishes. A prompt is done
            when num_beams hypotheses are finished and
            - early_stopping=True: at once;
            - early_stopping=False (Hugging Face's heuristic): the worst of them scores
              at least best_running / cur_len ** length_penalty, best_running the best
              running beam's sum(log p), cur_len its new tokens. With length_penalty > 0
              a longer continuation can still score higher, so this may stop before the
              best hypothesis is found;
            - early_stopping="never": as False, with cur_len replaced by max_new_tokens when
              length_penalty > 0, which makes the bound a true upper bound on every
              continuation's score: stopping early never changes the result (the result
              is still beam search's, which keeps num_beams beams, not exhaustive search).
        eos_token_id: id or ids that end a sequence; later positions get pad_token_id
            (default: the first eos id, or 0).
        generator / seed: randomness for sampling. seed is an int (each row draws its own
            stream, derived from the seed and the row index, as in fastrnn.sample) or (B,)
            ints giving each prompt a stream that depends on its own seed only. At step
            t, row i draws with seed_i + t * _STEP_SEED_STRIDE; the first step draws
            exactly what fastrnn.sample(scores, seed=seed) would.
        state_batch_dim: the batch dimension of every state tensor.
        cuda_graph: greedy and sampling on CUDA only: from the third new token on, each
            step (the model on the last token, the score processing, the draw and the
            bookkeeping) replays one CUDA graph, recorded after the second step ran
            eagerly as warm-up. The model must then be capturable (no host
            synchronisation, no data-dependent control flow or shapes in its forward:
            fastrnn's modules qualify) and its state must keep its structure and shapes.
            The tokens are the eager loop's. Without eos_token_id no step synchronises;
            with it, each step reads one flag to stop.

    Returns:
        (B, L) int64: each prompt followed by its new tokens, padded on the right.

    Raises:
        ValueError: bad arguments (the message names them; cuda_graph=True off CUDA or
            with num_beams > 1 among them); logits with a NaN, a +inf or
            no finite value at a step where a token is chosen (never a token drawn from
            them). On CUDA the device-side checks are collected with
            fastrnn.check_errors() once per step, where the loop already synchronises
            (greedy and sampling: to test whether every row has finished; beam search:
            to read the candidates on the host).
        TypeError: a model that breaks the protocol; non-integer prompts.
        An IndexError or RuntimeError the model raises on the prompts (an embedding given
        an id >= V) passes through with a note naming the largest prompt id.
    """
    prompts = _as_prompts(input_ids)
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    _check_arguments(max_new_tokens, min_new_tokens, repetition_penalty, num_beams, do_sample,
                     early_stopping, cuda_graph)
    if cuda_graph and prompts[0].device.type != "cuda":
        _fail(f"cuda_graph=True needs CUDA prompts and model, got {prompts[0].device}")
    if max_new_tokens == 0:
        return _pad_rows(prompts, pad)
    try:
        logits, state = _prefill(model, prompts, state_batch_dim)
    except (IndexError, RuntimeError) as e:  # e.g. an embedding given an id >= V
        largest = max(int(p.max()) for p in prompts)
        e.add_note(f"fastrnn.generate: the model failed on the prompts; token ids must lie in "
                   f"[0, V) (the largest here is {largest})")
        raise
    _check_vocabulary(prompts, logits.shape[-1], eos, num_beams)
    common = dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                  repetition_penalty=repetition_penalty, eos=eos, pad=pad,
                  state_batch_dim=state_batch_dim, backend=backend)
    if num_beams > 1:
        return _beam_search(model, prompts, logits, state, num_beams, length_penalty,
                            early_stopping, **common)
    if do_sample:
        draw = _sampler(logits, temperature, top_k, top_p, min_p, generator, seed, max_new_tokens,
                        backend)
    else:
        greedy = prepared_sampler(logits, 0.0, backend=backend)
        no_uniform = logits.new_zeros(len(prompts), dtype=torch.float64)  # greedy draws none
        draw = lambda step, scores: greedy(scores, no_uniform)  # noqa: E731
    loop = _DecodeLoop(model, prompts, logits, draw, **common)
    if cuda_graph:
        return loop.run_graphed(state, generator)
    return loop.run(state)


def _check_arguments(max_new_tokens, min_new_tokens, repetition_penalty, num_beams, do_sample,
                     early_stopping, cuda_graph):
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        _fail(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if isinstance(min_new_tokens, bool) or not isinstance(min_new_tokens, int) \
            or not 0 <= min_new_tokens <= max_new_tokens:
        _fail(f"min_new_tokens must be an int in [0, max_new_tokens], got {min_new_tokens!r}")
    if not repetition_penalty > 0:
        _fail(f"repetition_penalty must be > 0, got {repetition_penalty}")
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        _fail(f"num_beams must be an int >= 1, got {num_beams!r}")
    if num_beams > 1 and do_sample:
        _fail("beam sampling is not supported: use do_sample=False with num_beams > 1")
    if not any(early_stopping is v or (isinstance(v, str) and early_stopping == v)
               for v in EARLY_STOPPING):
        _fail(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if not isinstance(cuda_graph, bool):
        _fail(f"cuda_graph must be True or False, got {cuda_graph!r}", TypeError)
    if cuda_graph and num_beams > 1:
        _fail("cuda_graph=True runs greedy decoding and sampling; beam search (num_beams > 1) "
              "reads candidates on the host every step")


def _sampler(logits, temperature, top_k, top_p, min_p, generator, seed, max_new_tokens, backend):
    """step, scores -> tokens, step a 0-d int64 tensor on the logits' device (so a CUDA
    graph can replay the draw), with the per-step randomness settled here; the parameters
    are checked and converted once (prepared_sampler), not at every step."""
    B, device = logits.shape[0], logits.device
    if seed is not None and generator is not None:
        _fail("give a generator or a seed, not both")
    if isinstance(seed, int) and not isinstance(seed, bool):
        seed = row_seeds(seed, B, device)
    elif seed is not None:
        if not isinstance(seed, Tensor) or seed.dtype.is_floating_point or seed.dtype == torch.bool:
            _fail(f"seed must be an int or a tensor of ints, got {seed!r}", TypeError)
        if seed.shape not in ((), (B,)):
            _fail(f"seed must be an int or have shape ({B},), got {tuple(seed.shape)}")
        seed = seed.to(device=device, dtype=torch.int64).expand(B)

    if generator is not None and generator.device.type != device.type:
        _fail(f"generator is on {generator.device} but logits are on {device}")
    run = prepared_sampler(logits, temperature, top_k, top_p, min_p, backend=backend)
    # Each step's seed offset, computed exactly on the host (int64 wrap-around as Python
    # ints), read on the device by index_select (indexing with a 0-d tensor would sync).
    offsets = torch.tensor([_as_int64(step * _STEP_SEED_STRIDE) for step in range(max_new_tokens)],
                           dtype=torch.int64, device=device)

    def draw(step, scores):
        if seed is None:
            uniform = torch.rand(B, dtype=torch.float64, device=device, generator=generator)
        else:
            uniform = uniforms_from_seeds(seed + offsets.index_select(0, step.reshape(1)))
        return run(scores, uniform)
    return draw


def _as_int64(value: int) -> int:
    """value modulo 2^64 as a signed int64: seed offsets wrap as int64 tensor sums do."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


class _DecodeLoop:
    """Greedy decoding and sampling, one token per step, as a program on fixed tensors: the
    step counter lives on the device, and every step writes its token, the finished flags
    and the seen-token table in place. The eager loop (run) and the CUDA-graph loop
    (run_graphed) run the same steps, so the graph replays exactly what eager runs.

    The per-token work is kept to what the options need: without EOS no row finishes (no
    masking, no stopping test, so no host sync per token on CUDA), and the seen-token table
    only serves the repetition penalty."""

    def __init__(self, model, prompts, logits, draw, *, max_new_tokens, min_new_tokens,
                 repetition_penalty, eos, pad, state_batch_dim, backend):
        B, V = len(prompts), logits.shape[-1]
        device = logits.device
        self.model, self.prompts, self.first_logits, self.draw = model, prompts, logits, draw
        self.max_new_tokens, self.eos, self.pad = max_new_tokens, eos, pad
        self.penalty = repetition_penalty
        self.seen = _seen_tokens(prompts, V) if repetition_penalty != 1.0 else None
        self.rows = torch.arange(B, device=device)
        self.new = torch.full((B, max_new_tokens), pad, dtype=torch.long, device=device)
        self.finished = torch.zeros(B, dtype=torch.bool, device=device)
        self.eos_ids = torch.tensor(eos, dtype=torch.long, device=device)
        self.step = torch.zeros((), dtype=torch.long, device=device)   # the next token's index
        self.token = torch.zeros(B, 1, dtype=torch.long, device=device)  # the model's next input
        # EOS is barred while step < min_new_tokens.
        self.barred = None
        if eos and min_new_tokens > 0:
            self.barred = torch.zeros(V, dtype=torch.bool, device=device)
            self.barred[self.eos_ids] = True
            self.min_new_tokens = min_new_tokens

    def decide(self, logits: Tensor) -> None:
        """Choose the token of step `self.step` from its logits (B, V) float32, record it,
        and advance the step: device work only, no host read."""
        scores = logits
        if self.seen is not None:
            scores = _apply_repetition_penalty(scores, self.seen, self.penalty)
        if self.barred is not None:
            scores = torch.where(self.barred & (self.step < self.min_new_tokens), float("-inf"), scores)
        if self.eos:
            # Finished rows emit pad whatever their logits say: no error from them either.
            finished = self.finished
            token = torch.where(finished, self.pad,
                                self.draw(self.step, torch.where(finished[:, None], 0.0, scores)))
        else:
            token = self.draw(self.step, scores)
        self.new.scatter_(1, self.step.expand(token.shape[0], 1), token[:, None])
        if self.seen is not None:
            self.seen[self.rows, token.clamp(0, self.seen.shape[1] - 1)] |= ~self.finished
        if self.eos:
            self.finished |= torch.isin(token, self.eos_ids)
        self.token.copy_(token[:, None])
        self.step += 1

    def advance(self, state):
        """One step after the first: the model on the last token, then decide."""
        logits, state = _last_logits(self.model, self.token, state)
        self.decide(logits)
        return state

    def done_after(self, step: int) -> bool:
        """Whether the loop stops after step `step` (0-based)."""
        if step + 1 == self.max_new_tokens:
            return True
        return bool(self.eos) and bool(self.finished.all())  # synchronises on CUDA

    def result(self, steps: int) -> Tensor:
        return _pad_rows([torch.cat([p, n]) for p, n in zip(self.prompts, self.new[:, :steps])],
                         self.pad)

    def run(self, state) -> Tensor:
        for step in range(self.max_new_tokens):
            if step == 0:
                self.decide(self.first_logits)
            else:
                state = self.advance(state)
            errors.check_errors()  # so no token drawn from bad logits goes any further
            if self.done_after(step):
                return self.result(step + 1)
        raise AssertionError("unreachable: the last step always stops")

    def run_graphed(self, state, generator) -> Tensor:
        """Steps 0 and 1 eagerly (step 1 on a side stream, as the warm-up torch's CUDA-graph
        capture needs: plans, compiles and allocations happen there), then one graph of
        `advance` replayed per step, its inputs and outputs the loop's fixed tensors."""
        self.decide(self.first_logits)
        errors.check_errors()
        if self.done_after(0):
            return self.result(1)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            state = self.advance(state)
        torch.cuda.current_stream().wait_stream(side)
        errors.check_errors()
        if self.done_after(1):
            return self.result(2)
        static_state = map_state(state, torch.clone)
        graph = torch.cuda.CUDAGraph()
        if generator is not None:
            graph.register_generator_state(generator)
        with errors.recorded_reports() as recorded, torch.cuda.graph(graph):
            next_state = self.advance(static_state)
            _copy_state(static_state, next_state)
        for step in range(2, self.max_new_tokens):
            graph.replay()
            for report in recorded:
                report.report()
            if self.eos:
                errors.check_errors()
            if self.done_after(step):
                errors.check_errors()
                return self.result(step + 1)
        raise AssertionError("unreachable: the last step always stops")


def _copy_state(into, state) -> None:
    """Copy a state into tensors of the same structure and shapes (the graph's inputs)."""
    if isinstance(into, Tensor):
        if not isinstance(state, Tensor) or state.shape != into.shape:
            _fail("cuda_graph=True needs a model whose state keeps its structure and shapes", TypeError)
        into.copy_(state)
        return
    if not isinstance(state, (tuple, list)) or len(state) != len(into):
        _fail("cuda_graph=True needs a model whose state keeps its structure and shapes", TypeError)
    for a, b in zip(into, state):
        _copy_state(a, b)


# Hugging Face's beam search marks impossible candidates with this finite score (not -inf,
# so that sums and topk stay defined); fastrnn keeps it, so the same candidates tie.
_IMPOSSIBLE = -1.0e9


def _beam_search(model, prompts, logits, state, K, length_penalty, early_stopping, *,
                 max_new_tokens, min_new_tokens, repetition_penalty, eos, pad, state_batch_dim,
                 backend):
    """Hugging Face's beam search (transformers 5.25, GenerationMixin._beam_search and its
    helpers), step for step, on (B, K) tensors in float32 as there.

    Each step, per prompt:
    - log-probabilities: log_softmax of the logits, then the repetition penalty and the
      min_new_tokens rule applied to them (not renormalised), as Hugging Face's processors;
    - candidates: the best S = max(2, 1 + len(eos)) * K of the K * V continuations by
      accumulated log-probability (at most K * V, where Hugging Face's topk would fail),
      so that K of them still run whatever ends here;
    - a candidate "hits" when its token is an end token, or at the last step;
    - running beams: the best K candidates that do not hit;
    - finished hypotheses: the best K of the old ones and the candidates that hit AND rank
      among the first K (a hit ranked lower is dropped), scored
      sum(log p) / new_tokens ** length_penalty; none enters once the prompt is done;
    - the prompt is done (Hugging Face's _check_early_stop_heuristic) once the best running
      beam divided by L ** length_penalty cannot beat the worst of K finished hypotheses,
      L = the new tokens so far, or max_new_tokens for early_stopping="never" with
      length_penalty > 0; with early_stopping=True also once K hypotheses are finished.
    The loop ends when every prompt is done or at max_new_tokens; each prompt returns its
    best finished hypothesis.
    """
    B, V = len(prompts), logits.shape[-1]
    device = logits.device
    S = min(max(2, 1 + len(eos)) * K, K * V)
    expand = torch.arange(B, device=device).repeat_interleave(K)
    logits = logits[expand]
    state = map_state(state, lambda s: s.index_select(state_batch_dim, expand))
    seen = _seen_tokens(prompts, V)[expand]
    eos_ids = torch.tensor(eos, dtype=torch.long, device=device)
    # Running beams: tokens (B, K, steps) and accumulated log-probability. All beams start
    # from the prompt; only the first counts, so its continuations are not repeated.
    running = torch.zeros(B, K, 0, dtype=torch.long, device=device)
    running_score = torch.zeros(B, K, device=device)
    running_score[:, 1:] = _IMPOSSIBLE
    # Finished hypotheses: tokens (padded with pad), their count, score, and whether the
    # slot holds a real hypothesis.
    best = torch.full((B, K, max_new_tokens), pad, dtype=torch.long, device=device)
    best_length = torch.zeros(B, K, dtype=torch.long, device=device)
    best_score = torch.full((B, K), _IMPOSSIBLE, device=device)
    finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    in_first_k = torch.arange(S, device=device) < K
    batch = torch.arange(B, device=device)[:, None]

    for step in range(max_new_tokens):
        done = ~improvable[:, 0] | (finished.all(-1) & (early_stopping is True))
        _check_beam_scores(logits, done.repeat_interleave(K))
        logp = log_softmax(logits, backend=backend)
        logp = _processed_scores(logp, seen, step, repetition_penalty, min_new_tokens, eos)
        total = (logp.view(B, K, V) + running_score[:, :, None]).view(B, K * V)
        top_score, top_index = total.topk(S, dim=-1)
        parent, token = top_index // V, top_index % V
        candidates = torch.cat([running[batch, parent], token[:, :, None]], dim=-1)
        hits = torch.isin(token, eos_ids) | (step + 1 == max_new_tokens)

        # Running beams for the next step: the best K candidates that did not hit.
        keep = (top_score + hits.float() * _IMPOSSIBLE).topk(K, dim=-1)
        running_score = keep.values
        running, parent = candidates[batch, keep.indices], parent[batch, keep.indices]

        # Finished hypotheses: merge the hits among the first K with the old ones.
        new_score = top_score / ((step + 1) ** length_penalty)
        new_score += (finished.all(-1, keepdim=True) & (early_stopping is True)).float() * _IMPOSSIBLE
        new_score += (~improvable).float() * _IMPOSSIBLE
        entered = hits & in_first_k
        new_score += (~entered).float() * _IMPOSSIBLE
        padded = torch.full((B, S, max_new_tokens), pad, dtype=torch.long, device=device)
        padded[:, :, :step + 1] = candidates
        merged = torch.cat([best_score, new_score], dim=1).topk(K, dim=-1).indices
        best = torch.cat([best, padded], dim=1)[batch, merged]
        best_length = torch.cat([best_length, torch.full_like(token, step + 1)], dim=1)[batch, merged]
        best_score = torch.cat([best_score, new_score], dim=1)[batch, merged]
        finished = torch.cat([finished, entered], dim=1)[batch, merged]

        # Can a running beam still beat the worst finished hypothesis?
        length = max_new_tokens if early_stopping == "never" and length_penalty > 0 else step + 1
        best_possible = running_score[:, :1] / (length ** length_penalty)
        worst = torch.where(finished, best_score.min(dim=1, keepdim=True).values, _IMPOSSIBLE)
        improvable &= (best_possible > worst).any(dim=-1, keepdim=True)
        going_on = improvable.any() & ~(finished.all() & (early_stopping is True)) & ~hits.all()
        stop = not bool(going_on)  # synchronises on CUDA, once per step
        errors.check_errors()  # the logits' checks, before anything built on them is returned
        if stop:
            break

        rows = (batch * K + parent).reshape(-1)
        seen = seen[rows]
        seen[torch.arange(B * K, device=device), running[:, :, -1].reshape(-1)] = True
        state = map_state(state, lambda s: s.index_select(state_batch_dim, rows))
        logits, state = _last_logits(model, running[:, :, -1].reshape(-1, 1), state)

    outputs = best[:, 0].tolist(), best_length[:, 0].tolist()
    return _pad_rows([torch.cat([p, p.new_tensor(tokens[:n])]) for p, tokens, n in
                      zip(prompts, *outputs)], pad)


def _check_beam_scores(logits: Tensor, done: Tensor):
    """ValueError for a beam of a prompt still searching whose logits have a NaN, a +inf or
    no finite value (deferred on CUDA to the step's synchronisation)."""
    report_status("generate", torch.where(done, 0, logits_status(logits)))
