"""Reusable building blocks. Squeeze-excite and stochastic depth come from timm's layers."""
from botnet.layers.rel_pos_mhsa import RelPosMHSA, resize_pos_table

__all__ = ["RelPosMHSA", "resize_pos_table"]
