"""The generator's process-wide settings: parsed, checked, and applied by the entry points."""

from __future__ import annotations

import argparse
import sys

import pytest

from splitserve.generator import config as generator_config


def _config(*flags: str) -> generator_config.GeneratorConfig:
    parser = argparse.ArgumentParser()
    generator_config.add_arguments(parser)
    return generator_config.from_args(parser.parse_args(list(flags)), "model", "model")


def test_the_gil_switch_interval_is_applied_to_the_process() -> None:
    before = sys.getswitchinterval()
    try:
        generator_config.apply_process_settings(_config())
        assert sys.getswitchinterval() == before  # unset: Python's own
        generator_config.apply_process_settings(_config("--gil-switch-interval-ms", "0.5"))
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(before)


@pytest.mark.parametrize("value", ["0", "-1", "101"])
def test_a_switch_interval_out_of_range_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="--gil-switch-interval-ms"):
        _config("--gil-switch-interval-ms", value)


@pytest.mark.parametrize("flags,expected", [
    ((), False),  # this host has no GPU: auto is off
    (("--device", "cpu"), False),
    (("--device", "cuda"), True),  # the native engine on one GPU gets its own process
    (("--device", "cuda:1"), True),
    (("--device", "cuda", "--no-engine-process"), False),
    (("--device", "cuda", "--engine", "transformers"), False),
    (("--device", "cpu", "--engine-process"), True),
])
def test_the_engine_runs_in_its_own_process_by_default_only_for_native_on_a_gpu(
        flags: tuple[str, ...], expected: bool) -> None:
    assert _config(*flags).engine_process is expected
