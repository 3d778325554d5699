"""What each TensorRT-LLM release's LLM API honours, so model info never claims more than the engine does.

TorchSampler, the LLM API's default sampler in 1.x, accepts repetition/presence/frequency penalties
and a per-request seed in SamplingParams but ignores them up to and including 1.2.1. The penalties
were implemented on main by
NVIDIA/TensorRT-LLM#16485 (merged July 2026) and per-request seeds by #17172 (August 2026), both after
1.2.1; no release found here is shown to contain them, so they are off for every version. When a
release does, write its version in the table: requests from that version on are then served.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Mapping
from types import ModuleType

from packaging.version import InvalidVersion, Version

from splitserve.link.types import EngineCapabilities

# EngineCapabilities field -> the first TensorRT-LLM release whose LLM API honours it (None: no
# release is known to). A capability added to EngineCapabilities later takes one line here.
LLMAPI_FIRST_RELEASE: Mapping[str, str | None] = {
    "repetition_penalty": None,  # ignored by TorchSampler <= 1.2.1; implemented on main by #16485 (July 2026)
    "presence_penalty": None,  # ignored by TorchSampler <= 1.2.1, like repetition_penalty (#16485)
    "frequency_penalty": None,  # likewise
    "min_p": None,  # not shown to be honoured by TorchSampler 1.2.1: refused until a release is read that does
    "seed": None,  # no per-request seed in TorchSampler <= 1.2.1; added on main by #17172 (August 2026)
}

# What the LLM API honours on every 1.x release the adapters support.
LLMAPI_ALWAYS = EngineCapabilities(min_new_tokens=True, logprobs=True)


def llmapi_capabilities(version: str, first_release: Mapping[str, str | None] | None = None) -> EngineCapabilities:
    """The capabilities of the LLM API of TensorRT-LLM `version`, by the table above (or `first_release`)."""
    table = LLMAPI_FIRST_RELEASE if first_release is None else first_release
    honoured = {name: _reached(version, first) for name, first in table.items()}
    return dataclasses.replace(LLMAPI_ALWAYS, **honoured)


def installed_version(package: ModuleType) -> str:
    """The running tensorrt_llm's version: its `__version__`, else the installed distribution's."""
    version = getattr(package, "__version__", None)
    if isinstance(version, str):
        return version
    try:
        return importlib.metadata.version("tensorrt_llm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _reached(version: str, first: str | None) -> bool:
    if first is None:
        return False
    try:
        return Version(version) >= Version(first)
    except InvalidVersion:  # a version we cannot read is not shown to have anything
        return False
