"""Reusable building blocks. Squeeze-excite and stochastic depth come from timm's layers."""
from botnet.layers.attention_backends import IMPLS, choose_impl, sdpa_head_size
from botnet.layers.functional import rel_pos_attention
from botnet.layers.position_tables import resize_pos_table
from botnet.layers.rel_pos_mhsa import RelPosMHSA

__all__ = ["IMPLS", "RelPosMHSA", "choose_impl", "rel_pos_attention", "resize_pos_table", "sdpa_head_size"]
