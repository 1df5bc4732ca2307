"""Names for a run's classes after clustering (samseg.sam.namer), when its config asks for them.

The names go into the run's ClusterResult (so the overlay legend, masks.json and exports use
them) and into summary.json: `class_names` ({id: name}, the named ones) and `naming` (namer,
its weights' sha256, the vocabulary, and per class the best name, its probability and the
runner-up, named or not). A recluster does not carry names over: its class ids are new.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from samseg.engine.runner import ImageRun


def name_run(run: ImageRun, device: Optional[str] = None, seed: int = 0) -> Optional[dict[str, Any]]:
    """Name `run`'s classes in place; returns the summary keys to add (None: names are off or there are no classes)."""
    cfg = run.cfg.names
    if not cfg.enabled or run.clusters.n_clusters == 0:
        return None
    from samseg.core.namers import vocabulary
    from samseg.sam.namer import load_namer, name_classes

    names = vocabulary(cfg.vocabulary)
    namer = load_namer(cfg.namer, device, seed)
    named = name_classes(namer, run.image.rgb, run.masks, run.clusters.labels, run.embeddings, names, cfg.min_prob,
                         cfg.masks_per_class)
    given = {c: r["name"] for c, r in named.items() if r["name"]}
    run.values["cluster"] = dataclasses.replace(run.clusters, names=given)
    return {"class_names": {str(c): n for c, n in given.items()},
            "naming": {"namer": cfg.namer, "namer_sha256": namer.sha256, "vocabulary": cfg.vocabulary,
                       "min_prob": cfg.min_prob, "classes": [{"id": c, **r} for c, r in named.items()]}}
