"""Tells a bad request from an engine fault in what TensorRT-LLM's LLM API raises.

`RequestError` (tensorrt_llm.llmapi) carries both: `LLM._check_arguments` raises it for a prompt over
`max_num_tokens`, and every per-request error the executor reports (`Response.error_msg`) is
re-raised as `RequestError(error_msg)`, CUDA and executor faults included
(executor.py, `_handle_background_error`). So its message, not its type, decides the status code.
"""

from __future__ import annotations

import re

from splitserve.common.errors import EngineUnavailable, InvalidRequest, RequestError
from splitserve.generator.engines.trtllm_limits import limit_error

# The request-side refusals of TensorRT-LLM 1.2.1 (llm.py, base_worker.py, the C++ executor).
_BAD_REQUEST = re.compile(
    r"should not exceed (max_num_tokens|max_seq_len|max_batch_size)"  # prompt length, SamplingParams.n
    r"|`default_max_tokens` \(-?[\d.]+\) must be greater than 0"  # prompt leaves no room to generate
    r"|exceeds maximum input length"  # the executor's own prompt-length check
)


def is_bad_request(message: str) -> bool:
    """Whether a TensorRT-LLM error message refuses the request itself (not an engine fault)."""
    return _BAD_REQUEST.search(message) is not None


def llmapi_error(error: Exception, request_error_type: type[Exception] | None) -> RequestError:
    """The status an LLM API failure gets: INVALID_ARGUMENT for a bad request, UNAVAILABLE otherwise."""
    if isinstance(error, RequestError):
        return error
    if isinstance(error, ValueError):  # SamplingParams validation, a missing end_id
        return InvalidRequest(f"TensorRT-LLM refused the request: {error}")
    if isinstance(error, RuntimeError) and "shutting down" in str(error):
        return EngineUnavailable("generator is shutting down; retry on another replica")
    if request_error_type is not None and isinstance(error, request_error_type) and is_bad_request(str(error)):
        return InvalidRequest(f"TensorRT-LLM refused the request: {error}")
    return limit_error(error) or EngineUnavailable(f"engine failed the request: {error}")


def is_engine_fault(error: Exception, request_error_type: type[Exception] | None) -> bool:
    """A failure outside any one request: the LLM API shuts itself down after one of these."""
    per_request = request_error_type is not None and isinstance(error, request_error_type)
    return not (per_request or isinstance(error, (ValueError, RequestError)) or "shutting down" in str(error))
