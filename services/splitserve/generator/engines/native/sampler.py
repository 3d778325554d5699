"""Batched sampling on the device: penalties, stop masking, temperature, top-k/top-p/min-p, seeded Gumbel-max.

Every knob is per row; the per-row parameters travel as a few small tensors built once per call from the
Python-side options, which also decide the fast paths (so there is no host sync). The input logits are never
modified in place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from weakref import WeakKeyDictionary

import torch

from .constraints import BitmaskFiller, apply_bitmask
from .seeded_noise import gumbel_argmax, split_seed, token_keys
from .sequence import SamplingOptions, Sequence

_NEG_INF = float("-inf")


@dataclass(frozen=True)
class SamplerOutput:
    """The sampled ids of one step and, when some row asked, their logprobs from the raw logits."""

    token_ids: torch.Tensor  # [B] int64
    logprobs: torch.Tensor | None  # [B] float32: the chosen token's logprob; None when no row asked
    top_ids: torch.Tensor | None  # [B, K] int64, K = the largest top_logprobs in the batch; None when K == 0
    top_logprobs: torch.Tensor | None  # [B, K] float32, descending


class Sampler:
    """Turns a step's logits [B, V] into one token per sequence, each row with its own options."""

    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self._prompts: WeakKeyDictionary[Sequence, torch.Tensor] = WeakKeyDictionary()  # dropped with the sequence
        self._token_keys = token_keys(vocab_size, device)  # [V]: the token half of every noise counter
        # Eager, the hash is ~30 passes over [B, V] int64 (2.4 ms at B=256, V=128256 on an H200); compiled it is one
        # fused kernel (0.14 ms) with the same integer ops. CPU stays eager: no compiler needed, and B is small there.
        self._gumbel_argmax = torch.compile(gumbel_argmax, dynamic=True) if device.type == "cuda" else gumbel_argmax
        self._bitmasks = BitmaskFiller(vocab_size, device)

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> SamplerOutput:
        logits = logits[:, : self.vocab_size]  # a padded lm_head's extra columns are never sampled
        opts = [seq.sampling for seq in seqs]
        num_top = max((o.top_logprobs for o in opts), default=0)
        wants_logprobs = num_top > 0 or any(o.logprobs for o in opts)
        penalized = [i for i, o in enumerate(opts) if o.needs_penalties]
        masked = [i for i, seq in enumerate(seqs) if seq.stop_token_ids and
                  seq.num_output_tokens < seq.sampling.min_new_tokens]
        sampled = [i for i, o in enumerate(opts) if not o.is_greedy]
        constrained = [i for i, seq in enumerate(seqs) if seq.constraint is not None]
        if not (wants_logprobs or penalized or masked or sampled or constrained):
            return SamplerOutput(torch.argmax(logits, dim=-1), None, None, None)

        logits = logits.float()
        raw_logprobs = torch.log_softmax(logits, dim=-1) if wants_logprobs else None
        if penalized:
            rows = [seqs[i] for i in penalized]
            prompts = [self._prompt_ids(seq) for seq in rows]
            logits = _on_rows(logits, penalized, lambda x: apply_penalties(x, rows, prompts))
        if masked:
            logits = mask_stop_tokens(logits, [seqs[i] for i in masked], masked)
        if constrained:  # after penalties, before temperature and the filters; logprobs stay the raw ones
            logits = _on_rows(logits, constrained, lambda x: self._mask_grammar(x, [seqs[i] for i in constrained]))
        token_ids = self._choose(logits, seqs, sampled)
        return _with_logprobs(token_ids, raw_logprobs, num_top)

    def _mask_grammar(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """-inf at every token the rows' grammars do not allow next."""
        matchers = [seq.constraint for seq in seqs if seq.constraint is not None]
        return apply_bitmask(logits, self._bitmasks.fill(matchers))

    def _prompt_ids(self, seq: Sequence) -> torch.Tensor:
        """The prompt's ids on the device, sent once per sequence (they never change; outputs are sent each step)."""
        ids = self._prompts.get(seq)
        if ids is None:
            ids = self._prompts[seq] = _index(seq.token_ids[: seq.num_prompt_tokens], self.device)
        return ids

    def _choose(self, logits: torch.Tensor, seqs: list[Sequence], sampled: list[int]) -> torch.Tensor:
        """[B] ids: argmax for greedy rows, seeded sampling for the `sampled` rows."""
        if not sampled:
            return torch.argmax(logits, dim=-1)
        if len(sampled) == len(seqs):
            return self._sample(logits, seqs)
        idx = _index(sampled, logits.device)
        picked = self._sample(logits.index_select(0, idx), [seqs[i] for i in sampled])
        return torch.argmax(logits, dim=-1).index_copy(0, idx, picked)

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """[S] ids for rows that all sample: temperature, top-k, top-p, min-p, then seeded Gumbel-max."""
        opts = [seq.sampling for seq in seqs]
        params = _rows_tensor([[o.temperature, o.min_p] for o in opts], torch.float32, logits.device)
        counters = _rows_tensor([[*split_seed(seq.sampling.seed), seq.num_output_tokens] for seq in seqs],
                                torch.int64, logits.device)  # (seed low, seed high, output position)
        logits = logits / params[:, 0:1]
        filtered = [i for i, o in enumerate(opts) if o.top_k > 0 or o.top_p < 1.0]
        if filtered:
            logits = _on_rows(logits, filtered, lambda x: top_k_top_p(x, [opts[i] for i in filtered]))
        if any(o.min_p > 0.0 for o in opts):
            logits = min_p_filter(logits, params[:, 1:2])
        return self._gumbel_argmax(logits, counters[:, 0], counters[:, 1], counters[:, 2], self._token_keys)


def apply_penalties(logits: torch.Tensor, seqs: list[Sequence], prompts: list[torch.Tensor] | None = None,
                    ) -> torch.Tensor:
    """Repetition (HF rule, prompt and output tokens), then presence and frequency (OpenAI rule, output tokens).

    `prompts`: each row's prompt ids on the device (the Sampler caches them); built here when not given.
    """
    num_rows, vocab = logits.shape
    opts = [seq.sampling for seq in seqs]
    params = _rows_tensor([[o.repetition_penalty, o.presence_penalty, o.frequency_penalty] for o in opts],
                          torch.float32, logits.device)
    if prompts is None:
        prompts = [_index(seq.token_ids[: seq.num_prompt_tokens], logits.device) for seq in seqs]
    # Prompt tokens only matter to the repetition penalty: skip them for rows without one.
    prompts = [ids if o.repetition_penalty != 1.0 else ids[:0] for ids, o in zip(prompts, opts, strict=True)]
    outputs = [seq.output_token_ids for seq in seqs]
    num_output = sum(len(ids) for ids in outputs)
    tokens = torch.cat([_index(list(chain(*outputs)), logits.device), *prompts])
    lengths = _index([len(ids) for ids in outputs] + [ids.shape[0] for ids in prompts], logits.device)
    rows = torch.arange(num_rows, device=logits.device).repeat(2)
    flat = torch.repeat_interleave(rows, lengths, output_size=tokens.shape[0]) * vocab + tokens
    counts = torch.zeros(num_rows * vocab, device=logits.device)
    counts = counts.index_add_(0, flat[:num_output], torch.ones(num_output, device=logits.device)).view(num_rows, vocab)
    seen = torch.zeros(num_rows * vocab, dtype=torch.bool, device=logits.device).index_fill_(0, flat, True)
    factor = torch.where(seen.view(num_rows, vocab), params[:, 0:1], 1.0)
    logits = torch.where(logits > 0, logits / factor, logits * factor)
    return logits - params[:, 1:2] * (counts > 0) - params[:, 2:3] * counts


def mask_stop_tokens(logits: torch.Tensor, seqs: list[Sequence], rows: list[int]) -> torch.Tensor:
    """-inf at each stop id of the given rows (those still short of min_new_tokens)."""
    vocab = logits.shape[1]
    flat = [row * vocab + t for row, seq in zip(rows, seqs, strict=True) for t in seq.stop_token_ids if t < vocab]
    return logits.reshape(-1).index_fill(0, _index(flat, logits.device), _NEG_INF).view_as(logits)


def top_k_top_p(logits: torch.Tensor, opts: list[SamplingOptions]) -> torch.Tensor:
    """Top-k, then top-p over the survivors' softmax, both as value floors so that tied tokens share one fate."""
    vocab = logits.shape[1]
    top_ks = [min(o.top_k, vocab) or vocab for o in opts]  # no top-k: k = V keeps everything
    if all(o.top_k > 0 for o in opts):  # the candidates fit in a partial top-k: no sort of the vocabulary
        ordered = torch.topk(logits, max(top_ks), dim=-1).values
    else:
        ordered = torch.sort(logits, dim=-1, descending=True).values
    floor = ordered.gather(1, _index(top_ks, logits.device)[:, None] - 1)  # [F, 1]: the k-th largest value
    if any(o.top_p < 1.0 for o in opts):
        top_p = _rows_tensor([[o.top_p] for o in opts], torch.float32, logits.device)
        floor = torch.maximum(floor, _top_p_floor(logits, ordered, floor, top_p))
    return logits.masked_fill(logits < floor, _NEG_INF)


def _top_p_floor(logits: torch.Tensor, ordered: torch.Tensor, floor: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """[F, 1]: the lowest value top-p keeps; a token stays while the mass of strictly higher survivors is < p."""
    # The normaliser runs over the whole row: survivors tied at the floor may lie beyond a partial top-k.
    log_norm = torch.logsumexp(logits.masked_fill(logits < floor, _NEG_INF), dim=-1, keepdim=True)
    probs = torch.exp(ordered - log_norm).masked_fill(ordered < floor, 0.0)
    before = torch.cumsum(probs, dim=-1) - probs  # the mass ranked above each candidate, nondecreasing
    # The last candidate with mass above < p starts or continues the last kept run of equal values, so its value
    # is the floor; masking by value then keeps all of that run (ties share one fate). At least the top stays.
    num_kept = (before < top_p).sum(dim=-1, keepdim=True).clamp_(min=1)
    return ordered.gather(1, num_kept - 1)


def min_p_filter(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drops tokens with prob < min_p * max prob, in logit space: logit < max logit + log(min_p)."""
    floor = logits.amax(dim=-1, keepdim=True) + torch.log(min_p)  # min_p 0: floor -inf, nothing dropped
    return logits.masked_fill(logits < floor, _NEG_INF)


def _with_logprobs(token_ids: torch.Tensor, raw_logprobs: torch.Tensor | None, num_top: int) -> SamplerOutput:
    if raw_logprobs is None:
        return SamplerOutput(token_ids, None, None, None)
    chosen = raw_logprobs.gather(1, token_ids[:, None]).squeeze(1)
    if num_top == 0:
        return SamplerOutput(token_ids, chosen, None, None)
    top = torch.topk(raw_logprobs, num_top, dim=-1)
    return SamplerOutput(token_ids, chosen, top.indices, top.values)


def _on_rows(x: torch.Tensor, rows: list[int], fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`fn` applied to the given rows of x only (all of x when every row is listed)."""
    if len(rows) == x.shape[0]:
        return fn(x)
    idx = _index(rows, x.device)
    return x.index_copy(0, idx, fn(x.index_select(0, idx)))


def _rows_tensor(values: list[list[float]] | list[list[int]], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # Pinned: a copy from pageable memory waits for the work already queued on the stream (a hidden host sync).
    host = torch.tensor(values, dtype=dtype, pin_memory=device.type == "cuda")
    return host.to(device, non_blocking=True)


def _index(values: list[int], device: torch.device) -> torch.Tensor:
    host = torch.tensor(values, dtype=torch.int64, pin_memory=device.type == "cuda")
    return host.to(device, non_blocking=True)
