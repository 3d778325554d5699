"""Python client for the public API of splitserve."""
