"""The native engine's constraint seam: the compiled-grammar cache, the matcher, the bitmask on the logits, and
the sampler masking only the constrained rows (with the real default model's tokenizer and vocabulary)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from splitserve.common.errors import InvalidRequest
from splitserve.generator.engines.native.constraints import BitmaskFiller, ConstraintCompiler, apply_bitmask
from splitserve.generator.engines.native.sampler import Sampler
from splitserve.generator.engines.native.sequence import SamplingOptions, Sequence
from splitserve.link.types import Constraint, ConstraintKind

CPU = torch.device("cpu")
EOS = 2  # the default model's <|im_end|>
VOCAB = 49152


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> transformers.PreTrainedTokenizerBase:
    return transformers.AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def compiler(model_dir: Path) -> ConstraintCompiler:
    return ConstraintCompiler(model_dir, VOCAB, [EOS], max_cached=2)


def regex(spec: str) -> Constraint:
    return Constraint(ConstraintKind.REGEX, spec)


def allowed(bitmask: torch.Tensor, row: int = 0) -> set[int]:
    bits = bitmask[row].tolist()
    return {t for t in range(VOCAB) if (bits[t // 32] >> (t % 32)) & 1}


def test_apply_bitmask_masks_exactly_the_zero_bits() -> None:
    logits = torch.arange(2 * 70, dtype=torch.float32).view(2, 70)
    bitmask = torch.zeros(2, 3, dtype=torch.int32)
    bitmask[0, 0] = 0b101  # tokens 0 and 2
    bitmask[1, 2] = -(2**31)  # bit 31 of word 2: token 95, past the vocabulary; row 1 allows nothing in it
    bitmask[1, 1] = -(2**31)  # token 63: the sign bit
    masked = apply_bitmask(logits, bitmask)
    assert torch.isfinite(masked[0]).nonzero().flatten().tolist() == [0, 2]
    assert torch.isfinite(masked[1]).nonzero().flatten().tolist() == [63]
    assert torch.equal(masked[0, [0, 2]], logits[0, [0, 2]])


def test_a_matcher_walks_its_grammar_and_finishes(compiler: ConstraintCompiler,
                                                  tokenizer: transformers.PreTrainedTokenizerBase) -> None:
    matcher = compiler.matcher(regex("[0-9]{3}"))
    filler = BitmaskFiller(VOCAB, CPU)
    first = allowed(filler.fill([matcher]))
    assert EOS not in first and first and all(str(tokenizer.decode([t])).isdigit() for t in first)
    for token in tokenizer.encode("123"):
        assert not matcher.is_finished and matcher.accept(token)
    assert matcher.is_finished  # three digits: nothing more is allowed, not even waiting for EOS


def test_eos_is_allowed_only_where_the_grammar_may_end(compiler: ConstraintCompiler,
                                                       tokenizer: transformers.PreTrainedTokenizerBase) -> None:
    matcher = compiler.matcher(regex("a+"))
    filler = BitmaskFiller(VOCAB, CPU)
    assert EOS not in allowed(filler.fill([matcher]))
    assert matcher.accept(tokenizer.encode("a")[0])
    assert EOS in allowed(filler.fill([matcher])) and not matcher.is_finished
    assert matcher.accept(EOS) and matcher.is_finished


def test_compiled_once_per_spec_in_a_bounded_lru(compiler: ConstraintCompiler) -> None:
    for spec in ("x", "y", "x", "z"):  # x is used again before z arrives: y is the one dropped
        compiler.matcher(regex(spec))
    assert compiler.num_cached == 2
    assert set(compiler._cache) == {regex("x"), regex("z")}  # the cache is what is tested
    a, b = compiler.matcher(regex("x")), compiler.matcher(regex("x"))
    assert a.library_matcher is not b.library_matcher  # each request its own copy


def test_a_bad_spec_names_the_kind_and_the_library(compiler: ConstraintCompiler) -> None:
    says = r"(?s)constraint regex does not compile \(llguidance 1\.9\.1\): .*unclosed"
    with pytest.raises(InvalidRequest, match=says):
        compiler.matcher(regex("a(b"))
    with pytest.raises(InvalidRequest, match="constraint json_schema does not compile"):
        compiler.matcher(Constraint(ConstraintKind.JSON_SCHEMA, '{"type": "strin"}'))


def test_the_sampler_masks_only_the_constrained_rows(compiler: ConstraintCompiler,
                                                     tokenizer: transformers.PreTrainedTokenizerBase) -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, VOCAB)
    sampler = Sampler(VOCAB, CPU)
    seqs = [Sequence(i, [1, 2], 2, 10, frozenset({EOS}), SamplingOptions(temperature=t, seed=5))
            for i, t in enumerate((0.0, 1.0, 1.0))]
    free = sampler(logits, seqs).token_ids.tolist()
    seqs[1].constraint = compiler.matcher(Constraint(ConstraintKind.CHOICE, choices=("yes", "no")))
    picked = sampler(logits, seqs).token_ids.tolist()
    assert picked[0] == free[0] and picked[2] == free[2]  # the others, greedy and seeded, are untouched
    assert tokenizer.decode([picked[1]]) in {"yes", "no", "y", "n", "ye"}


def test_logprobs_stay_those_of_the_raw_logits(compiler: ConstraintCompiler) -> None:
    logits = torch.randn(1, VOCAB)
    seq = Sequence(0, [1], 1, 10, frozenset({EOS}), SamplingOptions(logprobs=True))
    seq.constraint = compiler.matcher(regex("[0-9]"))
    out = Sampler(VOCAB, CPU)(logits, [seq])
    assert out.logprobs is not None
    expected = torch.log_softmax(logits, dim=-1)[0, out.token_ids[0]]
    assert torch.allclose(out.logprobs[0], expected)
