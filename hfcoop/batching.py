"""Sequence and batch layout: the one place that pads token rows and lines up real and generated completions.

Layout used everywhere: prompts are left-padded (what ``generate`` continues from), completions right-padded (what
``generate`` returns), masks are 0/1 ``long`` tensors of the ids' shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

Rows = tuple[torch.Tensor, torch.Tensor]
"""``(ids, mask)``, both ``(B, T)``."""


def _pad(
    sequences: Sequence[Sequence[int]], pad_id: int, left: bool, device: torch.device | None, min_width: int
) -> Rows:
    width = max(max((len(s) for s in sequences), default=0), min_width)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            columns = slice(width - len(s), width) if left else slice(0, len(s))
            ids[i, columns] = torch.tensor(list(s), dtype=torch.long)
            mask[i, columns] = 1
    return (ids, mask) if device is None else (ids.to(device), mask.to(device))


def pad_left(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | None = None, min_width: int = 0
) -> Rows:
    """Token rows left-padded to the longest (at least ``min_width`` columns): prompts."""
    return _pad(sequences, pad_id, True, device, min_width)


def pad_right(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | None = None, min_width: int = 0
) -> Rows:
    """Token rows right-padded to the longest (at least ``min_width`` columns): completions."""
    return _pad(sequences, pad_id, False, device, min_width)


def pad_columns(ids: torch.Tensor, mask: torch.Tensor, width: int, pad_id: int) -> Rows:
    """Right-pads completion ids and mask to ``width`` columns."""
    extra = width - ids.shape[1]
    return F.pad(ids, (0, extra), value=pad_id), F.pad(mask, (0, extra), value=0)


def pad_to_common_width(blocks: Sequence[Rows], pad_id: int) -> list[Rows]:
    """Completion blocks (real rows, samples, ...) right-padded to the widest one's columns."""
    width = max(ids.shape[1] for ids, _ in blocks)
    return [pad_columns(ids, mask, width, pad_id) for ids, mask in blocks]


def concat_rows(blocks: Sequence[Rows], pad_id: int) -> Rows:
    """One batch of completions from several blocks (e.g. the real rows then the generated ones), stacked in order
    after right-padding them to a common width."""
    padded = pad_to_common_width(blocks, pad_id)
    return torch.cat([ids for ids, _ in padded]), torch.cat([mask for _, mask in padded])


def unpack_tokens(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token values of packed masked-in positions, ``(N,)``, back to ``(B, T)`` with zeros elsewhere."""
    return values.new_zeros(mask.shape).masked_scatter(mask.bool(), values)
