"""Names for a run's classes after clustering (samseg.sam.namer), when its config asks for them.

The names go into the run's ClusterResult (so the overlay legend, masks.json and exports use
them) and into summary.json: `class_names` ({id: name}, the named ones) and `naming` (namer,
its weights' sha256, the vocabulary, and per class the best name, its probability and the
runner-up, named or not). A recluster names its classes again: its class ids are new.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from samseg.engine.runner import ImageRun


# The stage cache's entry of an image's mask crops as a namer embedded them ({mask row: D}): the
# costly part of naming (the image tower), keyed by the image, the masks' pixels and the namer, so
# a new vocabulary, a rerun or a recluster of the same masks re-names from it and embeds only
# the crops it has not seen (the classes' text side is cached per vocabulary, samseg.sam.namer).
CROPS_STAGE, CROPS_CODEC = "namer-crops", "rows"


def name_run(run: ImageRun, device: Optional[str] = None, seed: int = 0, cache: Any = None) -> Optional[dict[str, Any]]:
    """Name `run`'s classes in place; returns the summary keys to add (None: names are off or there
    are no classes). cache: the StageCache holding the crops' embeddings (None: none kept)."""
    cfg = run.cfg.names
    if not cfg.enabled or run.clusters.n_clusters == 0:
        return None
    from samseg.core.namers import vocabulary
    from samseg.sam.namer import load_namer, name_classes

    names = vocabulary(cfg.vocabulary)
    namer = load_namer(cfg.namer, device, seed)
    key = crops_key(run, namer) if cache is not None and namer.sha256 else None
    crops = (cache.load(CROPS_STAGE, key, CROPS_CODEC) or {}) if key else {}
    known = len(crops)
    named = name_classes(namer, run.image.rgb, run.masks, run.clusters.labels, run.embeddings, names, cfg.min_prob,
                         cfg.masks_per_class, crops)
    if key and len(crops) > known:
        cache.save(CROPS_STAGE, key, CROPS_CODEC, crops)
    given = {c: r["name"] for c, r in named.items() if r["name"]}
    scores = {c: float(r["score"]) for c, r in named.items() if r["name"] and r.get("score") is not None}
    run.values["cluster"] = dataclasses.replace(run.clusters, names=given, scores=scores)
    return {"class_names": {str(c): n for c, n in given.items()},
            "naming": {"namer": cfg.namer, "namer_sha256": namer.sha256, "vocabulary": cfg.vocabulary,
                       "min_prob": cfg.min_prob, "crops_embedded": len(crops) - known,  # 0: named from the cache
                       "classes": [{"id": c, **r} for c, r in named.items()]}}


def crops_key(run: ImageRun, namer: Any) -> str:
    """The CROPS_STAGE entry's key: the image, its masks' pixels, the namer's weights and input size."""
    from samseg.edges.cache import content_key

    return content_key({"stage": CROPS_STAGE, "image_sha256": run.image.sha256, "masks_sha256": run.masks.content_sha256(),
                        "namer_sha256": namer.sha256, "image_size": namer.image_size})


def dataset_namer(cfg: Any, device: Optional[str] = None, seed: int = 0) -> Optional[Callable[..., dict[str, Any]]]:
    """The names of a batch's dataset-level classes, for samseg.edges.dataset_outputs (None: names
    are off). Each class is named once for the batch: the crops of its `masks_per_class` masks
    nearest its prototype, over all images, against the vocabulary (only the images holding
    those masks are read again)."""
    if not cfg.enabled:
        return None

    def name(summaries: list[dict[str, Any]], loaded: list[Any], results: list[Any], table: Any) -> dict[str, Any]:
        import numpy as np

        from samseg.core.namers import pick_names, vocabulary
        from samseg.edges.images import decode_image
        from samseg.edges.storage import read_verified
        from samseg.sam.namer import crops_embedding, load_namer, mask_crop, text_embeddings

        names = vocabulary(cfg.vocabulary)
        namer = load_namer(cfg.namer, device, seed)
        record = {"namer": cfg.namer, "namer_sha256": namer.sha256, "vocabulary": cfg.vocabulary, "min_prob": cfg.min_prob}
        if table.n_classes == 0:
            return {**record, "classes": []}
        # every member mask's cosine to its class prototype: (similarity, image, row) per class
        members: dict[int, list[tuple[float, int, int]]] = {c: [] for c in range(table.n_classes)}
        for i, ((_, emb, _), res) in enumerate(zip(loaded, results)):
            unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            for r in np.flatnonzero(res.labels >= 0):
                c = int(res.labels[r])
                members[c].append((float(unit[r] @ table.prototypes[c]), i, int(r)))
        seen = [c for c in range(table.n_classes) if members[c]]  # a class with no mask in this batch stays unnamed
        picks = {c: sorted(members[c], key=lambda m: (-m[0], m[1], m[2]))[:cfg.masks_per_class] for c in seen}
        by_image: dict[int, list[tuple[int, int]]] = {}  # image -> (class, mask row): each image read once
        for c, picked in picks.items():
            for _, i, r in picked:
                by_image.setdefault(i, []).append((c, r))
        crops: dict[int, list[np.ndarray]] = {c: [] for c in seen}
        for i, wanted in sorted(by_image.items()):
            img = summaries[i]["image"]
            rgb = decode_image(read_verified(img["uri"], img.get("sha256")), img["file_name"], uri=img["uri"]).rgb
            masks = loaded[i][0]
            for c, r in wanted:
                crops[c].append(mask_crop(namer, rgb, masks.decode([r])[0], masks.bbox_xywh[r]))
            del rgb  # one decoded image at a time
        class_kd = [crops_embedding(namer, crops[c]) for c in seen]
        rows = dict(zip(seen, pick_names(np.stack(class_kd), text_embeddings(namer, names), names, cfg.min_prob)))
        return {**record, "classes": [{"id": c, **rows[c]} for c in seen]}

    return name
