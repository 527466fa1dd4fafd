"""RelPosMHSA's position tables: resized to any map size and turned into the terms the attention adds.

A table trained at ``feat_size`` is linearly resized to the length an input needs (2L'-1 rows for
relative, L' for absolute) on the fly; :func:`position_terms` gives, for one input, the gathered
relative tables R_h / R_w or the absolute key embedding E.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["POS_KINDS", "resize_pos_table", "fit_table", "relative_tables", "position_terms"]

POS_KINDS = ("relative", "absolute", "none")


def resize_pos_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resize a (L, d) position table to (length, d) (align_corners=False)."""
    # (L, d) -> (1, d, L) -> (1, d, length) -> (length, d)
    return F.interpolate(table.t()[None], size=length, mode="linear", align_corners=False)[0].t()


def _needs_resize(table: torch.Tensor, length: int) -> bool:
    # Under tracing/compilation/export/scripting the input size may be symbolic: always take the
    # resize path there (resizing to the same length is exactly the identity), so no guard on H/W.
    if torch.jit.is_scripting():
        return True
    else:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return True
        return table.shape[0] != length


def fit_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """``table`` with ``length`` rows (resized only where the length differs or may differ)."""
    return resize_pos_table(table, length) if _needs_resize(table, length) else table


def _rel_index(length: int, device: torch.device) -> torch.Tensor:
    """(L, L) index: [query position, key position] -> key - query + L - 1."""
    pos = torch.arange(length, device=device)
    return pos[None, :] - pos[:, None] + length - 1


def relative_tables(x: torch.Tensor, r_h: torch.Tensor, r_w: torch.Tensor, H: int,
                    W: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """R_h (H, H, d) and R_w (W, W, d) in x's dtype: R_h[r, j] = r_h[j - r + H - 1], the table row for
    query row r and key row j (likewise for columns), from the tables resized to this map."""
    R_h = fit_table(r_h, 2 * H - 1)[_rel_index(H, x.device)].to(x.dtype)
    R_w = fit_table(r_w, 2 * W - 1)[_rel_index(W, x.device)].to(x.dtype)
    return R_h, R_w


def position_terms(x: torch.Tensor, table_h: Optional[torch.Tensor], table_w: Optional[torch.Tensor], pos: str,
                   d: int) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(R_h, R_w, E) for an input x: relative tables (:func:`relative_tables`) for pos "relative", the
    (H*W, d) key embedding E_h[row] + E_w[col] for "absolute"; None where they do not apply."""
    H, W = x.shape[2], x.shape[3]
    if table_h is None or table_w is None:
        return None, None, None
    if pos == "relative":
        R_h, R_w = relative_tables(x, table_h, table_w, H, W)
        return R_h, R_w, None
    if pos == "absolute":
        e = fit_table(table_h, H)[:, None, :] + fit_table(table_w, W)[None, :, :]
        return None, None, e.reshape(H * W, d).to(x.dtype)
    return None, None, None
