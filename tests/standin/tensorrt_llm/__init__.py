"""STAND-IN for NVIDIA TensorRT-LLM 1.2.1, for splitserve's tests only — not the real package.

TensorRT-LLM cannot be installed on the development machines. This package reproduces, on CPU and
with a toy "model", the behaviour the generator's adapters rely on, with the signatures of the 1.2.1
sources it mirrors: tensorrt_llm/llmapi/llm.py (LLM), tensorrt_llm/sampling_params.py
(SamplingParams), tensorrt_llm/executor/result.py (GenerationResult, CompletionOutput, Logprob),
tensorrt_llm/executor/executor.py and utils.py (RequestError), tensorrt_llm/runtime/model_runner.py
and model_runner_cpp.py (ModelRunner, ModelRunnerCpp) and the executor bindings (Executor, Request,
SamplingConfig, OutputConfig, Response, Result). Every class is locked against new attributes
(`__slots__`), so an adapter that touches a name the real class lacks fails here as it would there.
Names starting with `standin_` are test hooks with no counterpart in the real package.
Put `tests/standin` on sys.path to use it; deploy/trtllm/validate.sh checks the adapters against the
real package inside NVIDIA's container.
"""

__version__ = "1.2.1+standin"
