"""STAND-IN for NVIDIA TensorRT-LLM, for splitserve's tests only — not the real package.

TensorRT-LLM cannot be installed on the development machines. This package reproduces, on CPU and
with a toy "model", the documented behaviours the generator's adapters rely on (see the design
notes' TRTLLM.md): the LLM API's streaming outputs, the prebuilt-engine Executor, ModelRunnerCpp
and the Python ModelRunner. Put `tests/standin` on sys.path to use it. deploy/trtllm/validate.sh
checks the adapters against the real package inside NVIDIA's container.
"""

__version__ = "1.2.1+standin"
