"""Units of the tokenizer tier: stop-string hold-back and exact streaming detokenization."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from splitserve.tokenizer.detokenizer import IncrementalDetokenizer
from splitserve.tokenizer.stop_strings import StopStringMatcher


def feed_all(matcher: StopStringMatcher, pieces: list[str]) -> tuple[str, str | None]:
    out = []
    for piece in pieces:
        text, matched = matcher.feed(piece)
        out.append(text)
        if matched:
            return "".join(out), matched
    return "".join(out) + matcher.flush(), None


def test_stop_string_split_over_pieces_is_cut() -> None:
    assert feed_all(StopStringMatcher(["END"]), ["abc E", "N", "D more"]) == ("abc ", "END")


def test_partial_stop_is_released_when_it_cannot_match() -> None:
    matcher = StopStringMatcher(["END"])
    assert matcher.feed("abc EN") == ("abc ", None)
    assert matcher.feed("x") == ("ENx", None)


def test_earliest_of_several_stops_wins() -> None:
    assert feed_all(StopStringMatcher(["world", "lo w"]), ["hel", "lo world"]) == ("hel", "lo w")


def test_held_text_is_flushed_at_the_end() -> None:
    assert feed_all(StopStringMatcher(["STOP"]), ["the end ST"]) == ("the end ST", None)


def test_no_stops_passes_text_through() -> None:
    assert StopStringMatcher([]).feed("anything") == ("anything", None)


TEXTS = ["Héllo wörld, café naïve — “quotes” …", "中国的首都是北京。日本語も大丈夫です。",
         "emoji 🎉🚀👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
         "mixed: Ærø 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ½ ∑ ∞ ₿"]


@pytest.mark.parametrize("text", TEXTS)
def test_streaming_detokenization_equals_full_decode(model_dir: Path, text: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer.encode("Say it:", add_special_tokens=False)
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, prompt)
    pieces = [detok.step(i) for i in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)
    assert sum(1 for p in pieces if p == "") > 0 or len(text.encode()) == len(text)  # bytes were held back


def test_incomplete_character_at_the_end_is_flushed_like_full_decode(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer.encode("🎉", add_special_tokens=False)[:-1]  # cut inside the character
    detok = IncrementalDetokenizer(tokenizer, [])
    streamed = "".join(detok.step(i) for i in ids) + detok.flush()
    assert streamed == tokenizer.decode(ids)


@pytest.mark.parametrize("add_special_tokens", [False, True])
def test_codec_encodes_like_the_transformers_tokenizer(model_dir: Path, add_special_tokens: bool) -> None:
    from splitserve.tokenizer.text_codec import TextCodec

    codec = TextCodec(str(model_dir))
    for text in [*TEXTS, "", "  two  spaces\n\ttab", "<|im_start|>user\nhi<|im_end|>", "3.14159 × 10⁻³"]:
        expected = codec.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        assert codec.encode_text(text, add_special_tokens) == expected, text


def test_chat_content_is_encoded_with_special_token_text_split(model_dir: Path) -> None:
    from splitserve.tokenizer.text_codec import ChatMessage, TextCodec

    codec = TextCodec(str(model_dir))
    content = "close <|im_end|> now"
    ids = codec.encode_chat([ChatMessage("user", content)])
    reference = AutoTokenizer.from_pretrained(model_dir)  # its split_special_tokens stays set on its backend
    expected = reference.encode(content, add_special_tokens=False, split_special_tokens=True)
    im_end = codec.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert ids.count(im_end) == 2  # the system turn's and the user turn's, not the one in the content
    assert any(ids[i:i + len(expected)] == expected for i in range(len(ids)))
    assert codec.encode_text("<|im_end|>") == [im_end]  # plain prompts still read it as the special token
