"""Reusable building blocks. Squeeze-excite and stochastic depth come from timm's layers."""
from botnet.layers.rel_pos_mhsa import IMPLS, RelPosMHSA, choose_impl, rel_pos_attention, resize_pos_table, sdpa_head_size

__all__ = ["IMPLS", "RelPosMHSA", "choose_impl", "rel_pos_attention", "resize_pos_table", "sdpa_head_size"]
