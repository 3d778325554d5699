"""The constrained-decoding benchmarks run end to end on the real default model (tiny sizes): their tables
come out whole, and the throughput bench's check that no stream ends early holds under the mask."""

from __future__ import annotations

import re

import pytest

from splitserve.bench import constraint_mask, constraint_throughput


def test_mask_bench_times_both_advances_of_llguidance(capsys: pytest.CaptureFixture[str]) -> None:
    constraint_mask.main(["--tokenizer", "default", "--library", "llguidance", "--batch", "2"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| llguidance")]
    assert len(rows) == 1
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert cells[:3] == ["llguidance", "49152", "2"]
    assert all(float(cell) >= 0 for cell in cells[3:7]) and cells[7] == ""  # no device: no apply timing


def test_throughput_bench_prints_every_round_and_the_loss(capsys: pytest.CaptureFixture[str]) -> None:
    constraint_throughput.main(["--streams", "2", "--new-tokens", "6", "--rounds", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    rounds = re.findall(r"^\| (\d) \| (\d) of 2 \| (\d+) \|", out, re.MULTILINE)
    assert sorted((r, n) for r, n, _ in rounds) == [(r, n) for r in "12" for n in "012"]
    assert {tokens for _, _, tokens in rounds} == {"12"}  # every stream took all its tokens, constrained or not
    assert re.search(r"^\| 0 of 2 \| [\d.]+ \| 0\.0 % \|$", out, re.MULTILINE)
