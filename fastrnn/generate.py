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

from fastrnn.ops.sampling.op import sample
from fastrnn.ops.softmax.op import log_softmax

# Added to a row's seed once per step, so each step draws fresh but reproducible numbers.
_STEP_SEED_STRIDE = 0x632BE59BD9B4E01


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
    return logits[:, -1].float(), state


def _prefill(model, prompts: List[Tensor], state_batch_dim: int):
    """Feed the prompts; equal lengths go in one batch, unequal ones one prompt at a time."""
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
        if p.dtype.is_floating_point or p.dtype == torch.bool:
            _fail(f"token ids must be integers, got {p.dtype}", TypeError)
    return [p.long() for p in prompts]


def apply_repetition_penalty(scores: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """Each token already in the row's sequence, once: negative scores times penalty,
    others divided by it (the CTRL / Hugging Face rule). seen (B, L) token ids."""
    if penalty == 1.0:
        return scores
    picked = scores.gather(1, seen)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores.scatter(1, seen, picked)


def _processed_scores(logits, sequences, step, repetition_penalty, min_new_tokens, eos):
    scores = apply_repetition_penalty(logits, sequences, repetition_penalty)
    if step < min_new_tokens and eos:
        scores[:, eos] = float("-inf")
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
             length_penalty: float = 1.0, early_stopping: bool = False,
             eos_token_id: Union[int, Sequence[int], None] = None, pad_token_id: Optional[int] = None,
             generator: Optional[torch.Generator] = None, seed=None, state_batch_dim: int = 1,
             backend: Optional[str] = None) -> Tensor:
    """Continue each prompt with up to max_new_tokens tokens from a recurrent LM.

    Args:
        model: follows the protocol in this module's docstring.
        input_ids: (B, T) int64 prompts, or a list of 1-D prompts of any lengths.
        max_new_tokens / min_new_tokens: bounds on new tokens (EOS is barred before the min).
        do_sample: draw with fastrnn.sample (temperature, top_k, top_p, min_p, as there);
            otherwise greedy (argmax, ties to the lowest id), or beam search if num_beams > 1.
        repetition_penalty: > 0; 1 disables (see apply_repetition_penalty).
        num_beams, length_penalty, early_stopping: beam search; a finished hypothesis scores
            sum(log p) / new_tokens ** length_penalty; with early_stopping a prompt stops when
            num_beams hypotheses are finished, otherwise when no running beam can still
            beat the worst of them.
        eos_token_id: id or ids that end a sequence; later positions get pad_token_id
            (default: the first eos id, or 0).
        generator / seed: randomness for sampling; seed is an int, or (B,) ints giving each
            prompt its own reproducible stream.
        state_batch_dim: the batch dimension of every state tensor.

    Returns:
        (B, L) int64: each prompt followed by its new tokens, padded on the right.
    """
    prompts = _as_prompts(input_ids)
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        _fail(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not 0 <= min_new_tokens <= max_new_tokens:
        _fail(f"min_new_tokens must lie in [0, max_new_tokens], got {min_new_tokens}")
    if not repetition_penalty > 0:
        _fail(f"repetition_penalty must be > 0, got {repetition_penalty}")
    if not isinstance(num_beams, int) or num_beams < 1:
        _fail(f"num_beams must be an int >= 1, got {num_beams!r}")
    if num_beams > 1 and do_sample:
        _fail("beam sampling is not supported: use do_sample=False with num_beams > 1")
    if max_new_tokens == 0:
        return _pad_rows(prompts, pad)
    logits, state = _prefill(model, prompts, state_batch_dim)
    common = dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                  repetition_penalty=repetition_penalty, eos=eos, pad=pad,
                  state_batch_dim=state_batch_dim, backend=backend)
    if num_beams > 1:
        return _beam_search(model, prompts, logits, state, num_beams, length_penalty,
                            early_stopping, **common)
    draw = None
    if do_sample:
        draw = _sampler(len(prompts), logits.device, temperature, top_k, top_p, min_p, generator,
                        seed, backend)
    return _greedy_or_sample(model, prompts, logits, state, draw, **common)


def _sampler(B, device, temperature, top_k, top_p, min_p, generator, seed, backend):
    """step, scores -> tokens, with the per-step randomness settled here."""
    if isinstance(seed, int) and generator is None:
        generator = torch.Generator(device=device).manual_seed(seed)
        seed = None
    if seed is not None:
        seed = torch.as_tensor(seed, dtype=torch.int64, device=device).expand(B)

    def draw(step, scores):
        step_seed = None if seed is None else seed + step * _STEP_SEED_STRIDE
        return sample(scores, temperature, top_k, top_p, min_p, generator=generator,
                      seed=step_seed, backend=backend)
    return draw


def _greedy_or_sample(model, prompts, logits, state, draw, *, max_new_tokens, min_new_tokens,
                      repetition_penalty, eos, pad, state_batch_dim, backend):
    B = len(prompts)
    device = logits.device
    history = _pad_rows(prompts, prompts[0][0].item())  # padding repeats a seen token: harmless
    new = torch.full((B, 0), pad, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    eos_ids = torch.tensor(eos, dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        seen = torch.cat([history, new], dim=1)
        scores = _processed_scores(logits, seen, step, repetition_penalty, min_new_tokens, eos)
        token = draw(step, scores) if draw is not None else scores.argmax(-1)
        token = torch.where(finished, pad, token)
        new = torch.cat([new, token[:, None]], dim=1)
        finished |= torch.isin(token, eos_ids)
        if step + 1 == max_new_tokens or bool(finished.all()):
            break
        logits, state = _last_logits(model, token[:, None], state)
    return _pad_rows([torch.cat([p, n]) for p, n in zip(prompts, new)], pad)


def _beam_search(model, prompts, logits, state, K, length_penalty, early_stopping, *,
                 max_new_tokens, min_new_tokens, repetition_penalty, eos, pad, state_batch_dim,
                 backend):
    B, V = len(prompts), logits.shape[-1]
    device = logits.device
    expand = torch.arange(B, device=device).repeat_interleave(K)
    logits = logits[expand]
    state = map_state(state, lambda s: s.index_select(state_batch_dim, expand))
    history = _pad_rows(prompts, prompts[0][0].item())[expand]
    beam_scores = torch.full((B, K), float("-inf"), dtype=torch.float64, device=device)
    beam_scores[:, 0] = 0.0  # all beams start equal: expand from one only
    tokens = torch.zeros(B * K, 0, dtype=torch.long, device=device)
    hypotheses = [[] for _ in range(B)]  # (score, new tokens) per prompt, best K kept
    done = [False] * B

    def add(b, sum_logprob, seq):
        score = sum_logprob / (seq.shape[0] ** length_penalty)
        hypotheses[b].append((score, seq))
        hypotheses[b].sort(key=lambda h: -h[0])
        del hypotheses[b][K:]

    for step in range(max_new_tokens):
        seen = torch.cat([history, tokens], dim=1)
        scores = _processed_scores(logits, seen, step, repetition_penalty, min_new_tokens, eos)
        logp = log_softmax(scores, backend=backend).double()
        total = (beam_scores.reshape(-1, 1) + logp).reshape(B, K * V)
        top_scores, top_ids = total.topk(2 * K, dim=-1)
        next_beam = torch.zeros(B, K, dtype=torch.long)
        next_token = torch.full((B, K), pad, dtype=torch.long)
        next_score = torch.full((B, K), float("-inf"), dtype=torch.float64)
        top_scores_l, top_ids_l = top_scores.tolist(), top_ids.tolist()
        for b in range(B):
            if done[b]:
                continue
            chosen = 0
            for score, flat in zip(top_scores_l[b], top_ids_l[b]):
                beam, token = divmod(flat, V)
                if score == float("-inf"):
                    break
                if token in eos:
                    seq = torch.cat([tokens[b * K + beam], tokens.new_tensor([token])])
                    add(b, score, seq)
                    continue
                next_beam[b, chosen], next_token[b, chosen], next_score[b, chosen] = beam, token, score
                chosen += 1
                if chosen == K:
                    break
            done[b] = _beam_done(hypotheses[b], K, next_score[b].max().item(), step + 1,
                                 length_penalty, early_stopping)
        if all(done) or step + 1 == max_new_tokens:
            tokens = torch.cat([tokens[(torch.arange(B)[:, None] * K + next_beam).reshape(-1)],
                                next_token.reshape(-1, 1).to(device)], dim=1)
            beam_scores = next_score.to(device)
            break
        rows = (torch.arange(B)[:, None] * K + next_beam).reshape(-1).to(device)
        tokens = torch.cat([tokens[rows], next_token.reshape(-1, 1).to(device)], dim=1)
        history = history[rows]
        beam_scores = next_score.to(device)
        state = map_state(state, lambda s: s.index_select(state_batch_dim, rows))
        logits, state = _last_logits(model, tokens[:, -1:], state)

    for b in range(B):
        if not done[b]:
            for k in range(K):
                if beam_scores[b, k].item() > float("-inf"):
                    add(b, beam_scores[b, k].item(), tokens[b * K + k])
    best = [hypotheses[b][0][1] for b in range(B)]
    return _pad_rows([torch.cat([p, s.to(p.device)]) for p, s in zip(prompts, best)], pad)


def _beam_done(hyps, K, best_running, length, length_penalty, early_stopping) -> bool:
    if len(hyps) < K:
        return best_running == float("-inf")
    if early_stopping or best_running == float("-inf"):
        return True
    return hyps[-1][0] >= best_running / (length ** length_penalty)
