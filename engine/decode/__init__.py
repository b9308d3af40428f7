"""Decoding: fusing members' logits, generations, and the strategies that drive them."""
