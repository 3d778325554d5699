"""The link between the tiers: plain token-level types, their protobuf form, error codes, the stream multiplexer."""
