"""Pieces both tiers share: gRPC server plumbing, errors, the model store."""
