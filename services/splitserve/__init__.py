"""splitserve: an LLM served as a CPU tokenizer tier and a GPU generator tier over gRPC."""
