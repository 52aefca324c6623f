"""What the coarse stage returns: the descriptors that the losses and the retrieval read.

Shapes: B queries, C cells, Q hints, N object slots, D = 256. Masks are bool,
True = a valid hint/object; padding sits at the end of each row. In training
the batch is paired (C = B, cell i is query i's cell). At evaluation a query
batch carries only the text fields and a gallery batch only the cell fields.
"""
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["CoarseOutputs"]


@dataclass
class CoarseOutputs:
    """Coarse descriptors of queries and/or cells (see spatialoc_ros/networks/coarse.py).

    q_glo  [B, D]     global text descriptor Q_glo, L2-normalised
    p_glo  [C, D]     global cell descriptor P_glo (FAE), L2-normalised
    t_obj  [B, Q, D]  text object features F_Object_T, L2-normalised per hint
    t_rel  [B, Q, D]  text relation features F_Relation_T, L2-normalised per hint
    t_mask [B, Q]     valid hints
    p_obj  [C, N, D]  cell object features F_Object_P, L2-normalised per object
    p_rel  [C, N, D]  cell relation features F_Relation_P, L2-normalised per object
    p_mask [C, N]     valid objects
    """

    q_glo: Optional[torch.Tensor] = None
    p_glo: Optional[torch.Tensor] = None
    t_obj: Optional[torch.Tensor] = None
    t_rel: Optional[torch.Tensor] = None
    t_mask: Optional[torch.Tensor] = None
    p_obj: Optional[torch.Tensor] = None
    p_rel: Optional[torch.Tensor] = None
    p_mask: Optional[torch.Tensor] = None

    def require(self, *names: str) -> None:
        """Raise ValueError naming the fields among ``names`` that are None."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"coarse outputs lack {', '.join(missing)}")
