"""The distractor store resumes where a stopped build stopped."""
import itertools

import numpy as np
import torch

from spatialoc_ros.core.cell_store import CellStoreWriter
from spatialoc_ros.data.constants import ALL_SCENES
from spatialoc_ros.evaluation.distractors import FIRST_SEED, remaining_jobs
from spatialoc_ros.networks.outputs import CoarseOutputs

from test_cell_store import DIM, POINT_DIM, SLOTS, make_cells


def test_a_reopened_store_continues_after_its_last_complete_scene(tmp_path):
    gallery, bank = make_cells(6)
    writer = CellStoreWriter(tmp_path, 100, SLOTS, DIM, POINT_DIM, key="k")
    first = list(itertools.islice(remaining_jobs(writer), 3))
    assert first == [(FIRST_SEED, s) for s in ALL_SCENES[:3]]
    for (seed, scene), rows in zip(first[:2], (torch.arange(0, 4), torch.arange(4, 6))):
        d = gallery.descriptors
        written = writer.append([f"s{seed}/{i}" for i in rows.tolist()], f"s{seed}/{scene}",
                                CoarseOutputs(p_glo=d.p_glo[rows], p_obj=d.p_obj[rows],
                                              p_rel=d.p_rel[rows], p_mask=d.p_mask[rows]),
                                bank.batch(rows), np.full(len(rows), 30.0),
                                np.zeros((len(rows), 2)))
        writer.meta.setdefault("parts", []).append([seed, scene, written])
        writer.flush()
    reopened = CellStoreWriter(tmp_path, 100, SLOTS, DIM, POINT_DIM, key="k")
    assert reopened.rows == 6
    jobs = remaining_jobs(reopened)
    assert next(jobs) == first[2]
    # past the last scene of a seed, the next city
    rest = list(itertools.islice(jobs, len(ALL_SCENES)))
    assert rest[len(ALL_SCENES) - 3] == (FIRST_SEED + 1, ALL_SCENES[0])
    # another key starts afresh
    assert next(remaining_jobs(CellStoreWriter(tmp_path, 100, SLOTS, DIM, POINT_DIM,
                                               key="other"))) == first[0]
