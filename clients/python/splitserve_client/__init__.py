"""Python client for the public API of splitserve (async and sync).

    from splitserve_client import Client
    with Client("127.0.0.1:50051") as client:
        for delta in client.generate_stream("The capital of France is"):
            print(delta.text, end="")
"""

from splitserve_client.aio import AsyncClient
from splitserve_client.security import Security
from splitserve_client.sync import Client
from splitserve_client.types import Chat, Completion, Constraint, Delta, GenerationOptions, Tool, ToolCall

__all__ = ["AsyncClient", "Chat", "Client", "Completion", "Constraint", "Delta", "GenerationOptions", "Security",
           "Tool", "ToolCall"]
