"""The native engine: paged KV cache, continuous batching, CUDA graphs and batched sampling in plain PyTorch.

Its parts, each in its own module: `sequence` (one request's state), `block_manager` (paged KV blocks
with prefix caching), `scheduler` (what runs each step; plain Python), `model` (the Llama-family
decoder), `attention` (paged attention kernels), `sampler` (batched sampling on the device),
`model_runner` (owns the device: inputs, forward, CUDA graphs) and `engine` (the adapter to the
generator's Engine protocol).
"""
