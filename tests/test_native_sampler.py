"""The native engine's sampler against plain per-row hand computations, on real logits of the default model."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers

from splitserve.generator.engines.native import seeded_noise
from splitserve.generator.engines.native.sampler import Sampler, apply_penalties, min_p_filter, top_k_top_p
from splitserve.generator.engines.native.sequence import SamplingOptions, Sequence

CPU = torch.device("cpu")
PROMPTS = ["The capital of France is a city that many people", "def fibonacci(n):\n    if n < 2:\n        return"]
ROWS_PER_PROMPT = 8


@pytest.fixture(scope="module")
def logits(model_dir: Path) -> torch.Tensor:
    """[16, V] float32: next-token logits at the last positions of two prompts."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = []
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            rows.append(model(ids).logits[0, -ROWS_PER_PROMPT:])
    return torch.cat(rows).contiguous()


@pytest.fixture(scope="module")
def sampler(logits: torch.Tensor) -> Sampler:
    return Sampler(logits.shape[1], CPU)


GREEDY = SamplingOptions()


def seq(options: SamplingOptions = GREEDY, prompt: list[int] | None = None,
        output: list[int] | None = None, stop: frozenset[int] = frozenset()) -> Sequence:
    prompt = [1, 2, 3] if prompt is None else prompt
    output = [] if output is None else output
    return Sequence(0, prompt + output, len(prompt), 1000, stop, options)


# --- hand computations: plain Python over one row ------------------------------------------------------------


def hand_log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    log_norm = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - log_norm for x in row]


def hand_penalties(row: list[float], prompt: list[int], output: list[int], o: SamplingOptions) -> list[float]:
    row = list(row)
    for t in set(prompt) | set(output):
        row[t] = row[t] / o.repetition_penalty if row[t] > 0 else row[t] * o.repetition_penalty
    for t, n in Counter(output).items():
        row[t] -= o.presence_penalty + o.frequency_penalty * n
    return row


def hand_survivors(row: list[float], o: SamplingOptions) -> set[int]:
    """Token ids left by temperature, top-k (ties kept), top-p (strictly higher mass < p) and min-p."""
    scaled = [x / o.temperature for x in row]
    alive = set(range(len(row)))
    if o.top_k > 0:
        kth = sorted(scaled, reverse=True)[o.top_k - 1]
        alive = {t for t in alive if scaled[t] >= kth}
    if o.top_p < 1.0:
        top = max(scaled)
        weights = {t: math.exp(scaled[t] - top) for t in alive}
        norm = sum(weights.values())
        by_value = sorted(alive, key=lambda t: -scaled[t])
        alive, mass_above, start = set(), 0.0, 0
        while start < len(by_value) and (start == 0 or mass_above / norm < o.top_p):
            end = start  # one run of equal values shares its fate
            while end < len(by_value) and scaled[by_value[end]] == scaled[by_value[start]]:
                end += 1
            alive |= set(by_value[start:end])
            mass_above += sum(weights[t] for t in by_value[start:end])
            start = end
    if o.min_p > 0.0:
        top = max(scaled[t] for t in alive)
        alive = {t for t in alive if math.exp(scaled[t] - top) >= o.min_p}
    return alive


def hand_lowbias32(x: int) -> int:
    """The hash in Python big ints, written independently of the module's overflow-avoiding form."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) % 2**32
    x ^= x >> 15
    x = (x * 0x846CA68B) % 2**32
    return x ^ (x >> 16)


# --- greedy, logprobs, penalties, stop masking ----------------------------------------------------------------


def test_all_greedy_batch_is_a_plain_argmax(sampler: Sampler, logits: torch.Tensor) -> None:
    out = sampler(logits, [seq() for _ in range(logits.shape[0])])
    assert out.token_ids.tolist() == [max(range(len(r)), key=r.__getitem__) for r in logits.tolist()]
    assert out.token_ids.dtype == torch.int64
    assert out.logprobs is None and out.top_ids is None and out.top_logprobs is None


def test_logprobs_come_from_the_raw_logits(sampler: Sampler, logits: torch.Tensor) -> None:
    options = [SamplingOptions(logprobs=True), SamplingOptions(temperature=0.7, seed=3, top_logprobs=2),
               SamplingOptions(repetition_penalty=1.5, frequency_penalty=2.0, top_logprobs=5)]
    seqs = [seq(o, output=[10, 10, 11]) for o in options]
    out = sampler(logits[:3], seqs)
    assert out.logprobs is not None and out.top_ids is not None and out.top_logprobs is not None
    assert out.top_ids.shape == (3, 5)  # K is the batch's largest top_logprobs
    for i, row in enumerate(logits[:3].tolist()):
        expected = hand_log_softmax(row)
        chosen = int(out.token_ids[i])
        assert out.logprobs[i].item() == pytest.approx(expected[chosen], abs=1e-4)
        best = sorted(range(len(row)), key=lambda t: -expected[t])[:5]
        assert out.top_ids[i].tolist() == best
        assert out.top_logprobs[i].tolist() == pytest.approx([expected[t] for t in best], abs=1e-4)


def test_penalties_match_the_hand_rules(logits: torch.Tensor) -> None:
    options = [SamplingOptions(repetition_penalty=1.3), SamplingOptions(presence_penalty=0.7, frequency_penalty=0.4),
               SamplingOptions(repetition_penalty=0.8, presence_penalty=-0.5, frequency_penalty=1.5)]
    top = logits[:3].topk(6).indices.tolist()  # penalise tokens that matter, with positive and negative logits
    prompts = [[top[0][0], top[0][1], 5000, 5000], [top[1][0]], []]
    outputs = [[top[0][2], top[0][2], 7], [top[1][0], top[1][3], top[1][3], top[1][3], 30000], [top[2][1], 12]]
    seqs = [seq(o, prompts[i], outputs[i]) for i, o in enumerate(options)]
    got = apply_penalties(logits[:3], seqs)  # prompts built from the sequences here
    for i, row in enumerate(logits[:3].tolist()):
        assert got[i].tolist() == pytest.approx(hand_penalties(row, prompts[i], outputs[i], options[i]), abs=1e-5)


def test_penalised_greedy_rows_take_the_argmax_of_the_penalised_logits(sampler: Sampler, logits: torch.Tensor) -> None:
    best = logits[0].argmax().item()
    o = SamplingOptions(repetition_penalty=1.2, frequency_penalty=3.0)
    seqs = [seq(o, output=[best, best]), seq()]
    out = sampler(logits[:2], seqs)
    penalised = hand_penalties(logits[0].tolist(), [1, 2, 3], [best, best], o)
    assert out.token_ids[0].item() == max(range(len(penalised)), key=penalised.__getitem__) != best
    assert out.token_ids[1].item() == logits[1].argmax().item()  # a row without penalties is untouched


def test_stop_ids_are_masked_until_min_new_tokens(sampler: Sampler, logits: torch.Tensor) -> None:
    first, second = logits[0].topk(2).indices.tolist()
    o = SamplingOptions(min_new_tokens=3)
    early = seq(o, output=[9, 9], stop=frozenset({first, 2}))
    done = seq(o, output=[9, 9, 9], stop=frozenset({first, 2}))
    out = sampler(torch.stack([logits[0], logits[0]]), [early, done])
    assert out.token_ids.tolist() == [second, first]


# --- filters ----------------------------------------------------------------------------------------------------


FILTERS = [SamplingOptions(temperature=0.8, top_k=20), SamplingOptions(temperature=1.3, top_p=0.8),
           SamplingOptions(temperature=0.6, top_k=40, top_p=0.9), SamplingOptions(temperature=1.0, top_p=0.5),
           SamplingOptions(temperature=1.1, min_p=0.05), SamplingOptions(temperature=0.9, top_k=30, min_p=0.2)]


@pytest.mark.parametrize("options", FILTERS)
def test_filters_leave_the_hand_computed_survivors(logits: torch.Tensor, options: SamplingOptions) -> None:
    rows = logits[4:8] / options.temperature
    got = rows
    if options.top_k > 0 or options.top_p < 1.0:
        got = top_k_top_p(got, [options] * 4)
    if options.min_p > 0.0:
        got = min_p_filter(got, torch.full((4, 1), options.min_p))
    for i, row in enumerate(logits[4:8].tolist()):
        assert set(torch.isfinite(got[i]).nonzero().flatten().tolist()) == hand_survivors(row, options)


def test_sampled_tokens_stay_among_the_survivors(sampler: Sampler, logits: torch.Tensor) -> None:
    rows = [3, 9, 12]
    batch = torch.stack([logits[r] for r in rows for _ in FILTERS for _ in range(8)])
    options = [SamplingOptions(o.temperature, o.top_k, o.top_p, o.min_p, seed=s)
               for _ in rows for o in FILTERS for s in range(8)]
    out = sampler(batch, [seq(o) for o in options])
    for i, o in enumerate(options):
        assert out.token_ids[i].item() in hand_survivors(batch[i].tolist(), o)


def test_ties_at_the_kth_value_are_kept() -> None:
    row = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0, 0.0]])
    got = top_k_top_p(row, [SamplingOptions(temperature=1.0, top_k=2)])
    assert torch.isfinite(got[0]).tolist() == [True, True, True, True, False, False]


# --- seeded sampling -------------------------------------------------------------------------------------------


def test_hash_bits_match_python_integers_exactly() -> None:
    # The tensor path is int64 ops only (products within +-2**63, masked to 32 bits); CUDA runs the same integer
    # ops, so it yields these same bits. Python ints are unbounded, so this reference cannot overflow.
    rng = random.Random(7)
    values = [0, 1, 2**31 - 1, 2**31, 2**32 - 1] + [rng.randrange(2**32) for _ in range(2000)]
    got = seeded_noise.lowbias32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [hand_lowbias32(v) for v in values]
    seeds = [(rng.randrange(2**32), rng.randrange(2**32), rng.randrange(5000)) for _ in range(50)]
    keys = seeded_noise.row_keys(*(torch.tensor(col) for col in zip(*seeds, strict=True)))
    assert keys.tolist() == [seeded_noise.row_keys(*s) for s in seeds]
    tokens = seeded_noise.token_keys(300, CPU)
    bits = seeded_noise.noise_bits(keys, tokens)
    assert bits.tolist() == [[hand_lowbias32(k ^ t) for t in tokens.tolist()] for k in keys.tolist()]
    assert bits.min() >= 0 and bits.max() < 2**32


def test_a_seeded_token_does_not_depend_on_the_batch(sampler: Sampler, logits: torch.Tensor) -> None:
    target = SamplingOptions(temperature=1.2, top_k=60, top_p=0.95, min_p=0.01, presence_penalty=0.3)
    rng = random.Random(1)
    others = [SamplingOptions(), SamplingOptions(temperature=0.7, top_p=0.6), SamplingOptions(temperature=1.5),
              SamplingOptions(temperature=0.9, top_k=5), SamplingOptions(repetition_penalty=1.4, logprobs=True),
              SamplingOptions(temperature=1.0, min_p=0.3, top_logprobs=3), SamplingOptions(min_new_tokens=9)]
    for seed in range(8):
        target_seq = seq(replace(target, seed=seed), output=[5, 6, 7, 8][: seed % 4])
        alone = sampler(logits[seed % 16: seed % 16 + 1], [target_seq]).token_ids.item()
        for position in (0, 7, 15):
            rows = [rng.randrange(16) for _ in range(16)]
            seqs = [seq(replace(rng.choice(others), seed=rng.randrange(10**6)),
                        output=[1] * rng.randrange(5), stop=frozenset({4})) for _ in range(16)]
            rows[position], seqs[position] = seed % 16, target_seq
            assert sampler(logits[rows], seqs).token_ids[position].item() == alone


def test_seeds_and_positions_change_the_noise(sampler: Sampler, logits: torch.Tensor) -> None:
    options = [SamplingOptions(temperature=1.5, seed=s) for s in (11, 12)]
    row = logits[1:2]  # a high-entropy row
    draws = [[sampler(row, [seq(o, output=[0] * n)]).token_ids.item() for n in range(48)] for o in options]
    assert sum(a != b for a, b in zip(*draws, strict=True)) > 24
    assert len(set(draws[0])) > 10
    assert draws[0] == [sampler(row, [seq(options[0], output=[0] * n)]).token_ids.item() for n in range(48)]


@pytest.mark.parametrize("options", [SamplingOptions(temperature=0.7), SamplingOptions(temperature=1.0, top_k=4),
                                     SamplingOptions(temperature=1.4, top_p=0.7)])
def test_frequencies_follow_the_filtered_softmax(options: SamplingOptions) -> None:
    row = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0]
    draws = 6000
    seqs = [seq(replace(options, seed=s)) for s in range(draws)]
    out = Sampler(len(row), CPU)(torch.tensor([row] * draws), seqs)
    alive = hand_survivors(row, options)
    weights = [math.exp(x / options.temperature) if t in alive else 0.0 for t, x in enumerate(row)]
    counts = Counter(out.token_ids.tolist())
    for t, w in enumerate(weights):
        assert counts[t] / draws == pytest.approx(w / sum(weights), abs=0.02)


def test_mixed_batch_keeps_greedy_rows_greedy(sampler: Sampler, logits: torch.Tensor) -> None:
    options = [SamplingOptions(temperature=1.0, seed=i) if i % 2 else SamplingOptions() for i in range(16)]
    out = sampler(logits, [seq(o) for o in options])
    greedy = logits.argmax(dim=-1)
    assert all(out.token_ids[i] == greedy[i] for i in range(0, 16, 2))
    assert out.logprobs is None


def test_a_top_p_boundary_inside_a_run_of_ties_keeps_the_whole_run() -> None:
    row = torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.0]])  # mass above the tied 1.0s is 0.45 < 0.5, above the 0.0 is 0.94
    got = top_k_top_p(row, [SamplingOptions(temperature=1.0, top_p=0.5)])
    assert torch.isfinite(got[0]).tolist() == [True, True, True, True, False]
