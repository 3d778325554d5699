"""The tokenizer tier: the public text API in front of the generator tier."""
