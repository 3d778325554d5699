"""Greedy references the TensorRT-LLM engines are compared against (used by check.py).

In NVIDIA's container the reference is plain `model.generate` in the container's own transformers
(4.57.x has no continuous-batching config, so our torch engine cannot run there). Against the
stand-in it is the stand-in's toy rule: the next token is the last one plus one.
"""

from __future__ import annotations

from pathlib import Path


def transformers_greedy(model_dir: Path, prompts: list[list[int]], max_new: int) -> list[list[int]]:
    """Greedy continuations by `generate` on the GPU, one prompt at a time (no padding effects)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16).to("cuda").eval()
    continuations = []
    for ids in prompts:
        inputs = torch.tensor([ids], device="cuda")
        with torch.no_grad():
            out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new,
                                 do_sample=False, num_beams=1)
        continuations.append([int(t) for t in out[0][len(ids):]])
    del model
    torch.cuda.empty_cache()  # the engines under test need the memory
    return continuations


def standin_greedy(prompts: list[list[int]], max_new: int, eos_id: int, vocab_size: int) -> list[list[int]]:
    """What the stand-in's toy model generates greedily; the EOS token ends a continuation, included."""
    continuations = []
    for ids in prompts:
        tokens: list[int] = []
        while len(tokens) < max_new:
            tokens.append(((tokens or ids)[-1] + 1) % vocab_size)
            if tokens[-1] == eos_id:
                break
        continuations.append(tokens)
    return continuations
