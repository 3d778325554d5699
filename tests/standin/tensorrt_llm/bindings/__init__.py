"""STAND-IN for tensorrt_llm.bindings (the C++ bindings); only `executor` is reproduced."""
