"""The serving core: everything a query needs below the Localizer, and nothing of training or
evaluation.

Layers: ``data`` -> ``networks`` -> ``core`` -> ``inference.Localizer`` -> ``ros`` and the CLI;
``training`` and ``evaluation`` sit beside ``inference`` on top of the core and never import
each other. Seams for what comes next:

* :mod:`.map_source` - where cells come from (today a KITTI360Pose folder);
* :mod:`.retriever` - query descriptors in, top-k gallery rows and fused scores out
  (today exhaustive scoring);
* :mod:`.weights` - one weights folder loaded and checked as a bundle.

The rest: the device (:mod:`.device`), frozen-input caches (:mod:`.text_cache`,
:mod:`.cell_bank`, :mod:`.frozen_inputs`, :mod:`.gallery`, keyed by the digests of
:mod:`spatialoc_ros.digest`, stored through :mod:`.cache_files`), batched encoding
(:mod:`.encoding`), the fused retrieval score and its recall (:mod:`.retrieval`), the
consensus of overlapping cells (:mod:`.consensus`), the published covariance
(:mod:`.covariance`) and the checks on query text (:mod:`.query_text`).
"""
