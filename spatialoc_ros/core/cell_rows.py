"""Row access to encoded cells, wherever they live: what a retriever and the fine stage read.

Three sources answer the same questions (:class:`CellRows`): a gallery and its
cell bank in memory (:class:`MemoryCells`), a memory-mapped
:class:`~.cell_store.CellStore`, and a stack of both (:class:`StackedCells`;
the scale benchmark's test gallery followed by distractor cells of other
cities). Rows are numbered from 0 across the stack.
"""
from __future__ import annotations

from typing import List, Protocol, Sequence

import torch

from ..networks.outputs import CoarseOutputs


class CellRows(Protocol):
    def __len__(self) -> int:
        """Cells."""

    def global_descriptors(self) -> torch.Tensor:
        """P_glo [C, D] float32, in memory."""

    def instance(self, rows: torch.Tensor) -> CoarseOutputs:
        """p_obj, p_rel [M, N, D] and p_mask [M, N] of ``rows`` [M]."""

    def bank_batch(self, rows: torch.Tensor) -> dict:
        """The fine stage's cell inputs of ``rows`` (:meth:`.cell_bank.CellBank.batch`)."""


class MemoryCells:
    """A :class:`~.gallery.Gallery` (descriptors) and its :class:`~.cell_bank.CellBank` in
    memory."""

    def __init__(self, gallery, bank):
        self.gallery, self.bank = gallery, bank

    def __len__(self) -> int:
        return len(self.gallery)

    def global_descriptors(self) -> torch.Tensor:
        return self.gallery.descriptors.p_glo

    def instance(self, rows: torch.Tensor) -> CoarseOutputs:
        d = self.gallery.descriptors
        return CoarseOutputs(p_obj=d.p_obj[rows], p_rel=d.p_rel[rows], p_mask=d.p_mask[rows])

    def bank_batch(self, rows: torch.Tensor) -> dict:
        return self.bank.batch(rows)


def _pad_slots(t: torch.Tensor, n: int) -> torch.Tensor:
    if t.shape[1] == n:
        return t
    pad = t.new_zeros((t.shape[0], n - t.shape[1], *t.shape[2:]))
    return torch.cat([t, pad], dim=1)


class StackedCells:
    """Several cell sources one after the other; row r of the stack is row r - offset of its
    part."""

    def __init__(self, parts: Sequence[CellRows]):
        self.parts: List[CellRows] = [p for p in parts if len(p) > 0]
        sizes = torch.tensor([len(p) for p in self.parts], dtype=torch.long)
        self.starts = torch.cumsum(sizes, 0) - sizes
        self.total = int(sizes.sum())

    def __len__(self) -> int:
        return self.total

    def global_descriptors(self) -> torch.Tensor:
        return torch.cat([p.global_descriptors() for p in self.parts])

    def _split(self, rows: torch.Tensor):
        """(part index, local rows, positions in ``rows``) per part that ``rows`` touch."""
        rows = rows.reshape(-1)
        which = torch.searchsorted(self.starts, rows, right=True) - 1
        for i in torch.unique(which).tolist():
            at = (which == i).nonzero().squeeze(1)
            yield i, rows[at] - self.starts[i], at

    def _gather(self, rows: torch.Tensor, fetch) -> dict:
        pieces = [(at, fetch(self.parts[i], local)) for i, local, at in self._split(rows)]
        out = {}
        for name in pieces[0][1]:
            values = [(at, part[name]) for at, part in pieces if part[name] is not None]
            if not values:
                out[name] = None
                continue
            if values[0][1].dim() >= 2:
                n = max(v.shape[1] for _, v in values)
                values = [(at, _pad_slots(v, n)) for at, v in values]
            first = values[0][1]
            full = first.new_zeros((rows.numel(), *first.shape[1:]))
            for at, v in values:
                full[at] = v
            out[name] = full
        return out

    def instance(self, rows: torch.Tensor) -> CoarseOutputs:
        def fetch(part, local):
            inst = part.instance(local)
            return {k: getattr(inst, k) for k in ("p_obj", "p_rel", "p_mask")}

        return CoarseOutputs(**self._gather(rows, fetch))

    def bank_batch(self, rows: torch.Tensor) -> dict:
        return self._gather(rows, lambda part, local: part.bank_batch(local))
