"""Dataset-level classes: one set of class ids shared by every image of a batch.

Per-image clustering gives ids that mean something different in every image. Here all
masks of a batch are clustered together (`cluster_batch`), each class is summarised by a
prototype and a radius (`build_classes` → `ClassTable`, serialised as classes.json), and
masks of later images are labelled by nearest prototype without re-clustering
(`assign_to_classes`), so class ids stay stable over time.

Scale. DBSCAN with the cosine metric runs through samseg.core.cosine_dbscan (exact, blocked
float32 products on unit vectors, memory O(block) instead of scikit-learn's O(Σ neighbour
lists)); other algorithms and metrics go through `samseg.core.cluster.cluster_embeddings`
unchanged. Beyond `max_cluster` masks a seeded random sample is clustered and the rest
are assigned by prototype.

Arrays in, arrays and small dataclasses out; no I/O (classes.json text is built and parsed
here, written by the caller).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from samseg.core.config import ClusterConfig
from samseg.core.cosine_dbscan import BLOCK_FLOATS, Gram, dbscan_cosine_chunked, eps_euclidean, row_chunks
from samseg.core.cluster import renumber
from samseg.core.types import ClusterResult

__all__ = [
    "ClassTable", "ClassTableError", "assign_to_classes", "build_classes", "classify_batch", "cluster_batch",
    "cluster_rows", "dbscan_cosine_chunked", "eps_euclidean", "prototypes_and_radii", "renumber",
]

CLASSES_FORMAT = "samseg.classes/1"

# Masks clustered in one go before the seeded-sample path takes over. DBSCAN (chunked,
# O(chunk·N) memory) is practical at 200k; HDBSCAN's and agglomerative's cost grows much
# faster (agglomerative holds an N² distance matrix: 20k → 3.2 GB float64).
DEFAULT_MAX_CLUSTER: dict[str, int] = {"dbscan": 200_000, "hdbscan": 50_000, "agglomerative": 20_000}



class ClassTableError(ValueError):
    """classes.json that cannot be used (wrong format, shapes, or embedding size)."""


@dataclass(frozen=True, eq=False)
class ClassTable:
    """Dataset-level classes of a batch, class id c = row c.

    prototypes: K×C float32, unit rows: the normalised mean of the unit embeddings of the
      class's masks. radii: (K,) float32, max cosine distance member → prototype (the
      radius that covers every member). sizes: (K,) int64 masks per class.
    image_counts: per class {image name: masks of that class in it}, names in batch order.
    image_names: every image of the batch (including images with no class at all).
    n_noise: masks of the batch that are in no class. cluster: the ClusterConfig fields
    used. sample: how the batch was clustered ({"n_masks", "n_clustered", "seed"}).
    naming: the classes' names when the batch was named ({"namer", "namer_sha256",
    "vocabulary", "min_prob", "classes": [{"id", "name" (None: unnamed), "best", "score",
    "runner_up", "runner_up_score"}]}); a batch assigned to these classes keeps them.
    """

    prototypes: np.ndarray
    radii: np.ndarray
    sizes: np.ndarray
    image_counts: list[dict[str, int]]
    image_names: list[str]
    n_noise: int = 0
    cluster: dict[str, Any] = field(default_factory=dict)
    sample: dict[str, Any] = field(default_factory=dict)
    naming: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> dict[int, str]:
        """{class id: name} of the named classes."""
        return {int(r["id"]): str(r["name"]) for r in self.naming.get("classes", []) if r.get("name")}

    @property
    def n_classes(self) -> int:
        return int(self.prototypes.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.prototypes.shape[1])

    def image_coverage(self) -> np.ndarray:
        """(K,) float64: fraction of the batch's images in which each class occurs."""
        n = max(1, len(self.image_names))
        return np.array([len(c) / n for c in self.image_counts], dtype=np.float64)

    def metrics(self) -> dict[str, float]:
        """MLflow metrics of the batch: n_classes, n_noise, n_masks, mean coverage, and
        `class_coverage.<c>` (fraction of images containing class c) per class."""
        cov = self.image_coverage()
        out: dict[str, float] = {
            "n_classes": float(self.n_classes),
            "n_noise": float(self.n_noise),
            "n_masks": float(int(self.sizes.sum()) + self.n_noise),
            "mean_class_coverage": float(cov.mean()) if len(cov) else 0.0,
        }
        out.update({f"class_coverage.{c}": float(v) for c, v in enumerate(cov)})
        return out

    def to_dict(self) -> dict[str, Any]:
        cov = self.image_coverage()
        classes = [
            {
                "id": c,
                "size": int(self.sizes[c]),
                "images": list(self.image_counts[c]),
                "image_counts": dict(self.image_counts[c]),
                "image_coverage": float(cov[c]),
                "radius": float(self.radii[c]),
                "prototype": [float(v) for v in self.prototypes[c]],
            }
            for c in range(self.n_classes)
        ]
        return {
            "format": CLASSES_FORMAT,
            "n_classes": self.n_classes,
            "n_noise": int(self.n_noise),
            "n_images": len(self.image_names),
            "embedding_dim": self.embedding_dim,
            "image_names": list(self.image_names),
            "cluster": dict(self.cluster),
            "sample": dict(self.sample),
            **({"naming": self.naming} if self.naming else {}),
            "classes": classes,
        }

    def to_json(self) -> str:
        """classes.json text (prototypes as float lists; float32 round-trips exactly)."""
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "classes.json") -> "ClassTable":
        """Parse classes.json; ClassTableError names `source` and the problem."""
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ClassTableError(f"{source}: not valid JSON ({exc})") from exc
        return cls.from_dict(d, source)

    @classmethod
    def from_dict(cls, d: Any, source: str = "classes.json") -> "ClassTable":
        if not isinstance(d, dict) or d.get("format") != CLASSES_FORMAT:
            raise ClassTableError(f"{source}: not a samseg classes file (format must be {CLASSES_FORMAT!r})")
        try:
            classes = sorted(d["classes"], key=lambda c: int(c["id"]))
            if [int(c["id"]) for c in classes] != list(range(len(classes))):
                raise ClassTableError(f"{source}: class ids must be 0..K-1 without gaps")
            dim = int(d["embedding_dim"])
            protos = np.asarray([c["prototype"] for c in classes], dtype=np.float32).reshape(len(classes), dim)
            table = cls(
                prototypes=protos,
                radii=np.asarray([c["radius"] for c in classes], dtype=np.float32).reshape(len(classes)),
                sizes=np.asarray([c["size"] for c in classes], dtype=np.int64).reshape(len(classes)),
                image_counts=[{str(k): int(v) for k, v in c["image_counts"].items()} for c in classes],
                image_names=[str(n) for n in d["image_names"]],
                n_noise=int(d.get("n_noise", 0)),
                cluster=dict(d.get("cluster", {})),
                sample=dict(d.get("sample", {})),
                naming=dict(d.get("naming") or {}),
            )
        except ClassTableError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ClassTableError(f"{source}: malformed classes file ({type(exc).__name__}: {exc})") from exc
        if not np.isfinite(table.prototypes).all() or not np.isfinite(table.radii).all():
            raise ClassTableError(f"{source}: prototypes/radii contain NaN or inf")
        return table


# ----------------------------------------------------------------------------- batch


def cluster_batch(
    embeddings_per_image: Sequence[np.ndarray],
    cfg: ClusterConfig,
    max_cluster: int | None = None,
    seed: int = 0,
    image_names: Sequence[str] | None = None,
    gram: Gram | None = None,
) -> list[ClusterResult]:
    """Cluster every mask of a batch together: one ClusterResult per image, ids shared.

    embeddings_per_image: list of N_i×C arrays (row order = that image's mask order).
    Ids are numbered by decreasing batch-wide size (ties: first member in batch order).
    max_cluster: above this many masks a seeded random sample of that size is clustered
    and the other masks are assigned by nearest covering prototype (else noise); None →
    DEFAULT_MAX_CLUSTER[cfg.algorithm]. image_names only improve error messages. gram: the
    cosine DBSCAN's block product (samseg.core.cosine_dbscan.Gram; a GPU's, samseg.sam.gram).
    """
    x, offsets = _stack(embeddings_per_image, cfg.metric, image_names)
    labels = _cluster_all(x, cfg, max_cluster, seed, gram)
    return [ClusterResult(labels=labels[offsets[i] : offsets[i + 1]].copy()) for i in range(len(offsets) - 1)]


def classify_batch(
    embeddings_per_image: Sequence[np.ndarray],
    image_names: Sequence[str],
    cfg: ClusterConfig,
    max_cluster: int | None = None,
    seed: int = 0,
    gram: Gram | None = None,
) -> tuple[list[ClusterResult], ClassTable]:
    """cluster_batch + build_classes in one call: (per-image results, ClassTable).
    The table's `sample` records whether (and how) a seeded sample was clustered."""
    results = cluster_batch(embeddings_per_image, cfg, max_cluster=max_cluster, seed=seed, image_names=image_names,
                            gram=gram)
    n = int(sum(len(r.labels) for r in results))
    limit = DEFAULT_MAX_CLUSTER[cfg.algorithm] if max_cluster is None else int(max_cluster)
    sample = {"n_masks": n, "n_clustered": min(n, limit), "max_cluster": limit, "seed": int(seed)}
    return results, build_classes(embeddings_per_image, results, image_names, cfg=cfg, sample=sample)


def _cluster_all(x: np.ndarray, cfg: ClusterConfig, max_cluster: int | None, seed: int,
                 gram: Gram | None = None) -> np.ndarray:
    """(N,) labels for the stacked N×C batch, sampling above max_cluster."""
    limit = DEFAULT_MAX_CLUSTER[cfg.algorithm] if max_cluster is None else int(max_cluster)
    if limit < 1:
        raise ValueError(f"max_cluster must be >= 1, got {limit}")
    n = x.shape[0]
    if n <= limit:
        return cluster_rows(x, cfg, gram)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=limit, replace=False))
    labels = np.full(n, -1, dtype=np.int64)
    labels[sample] = cluster_rows(x[sample], cfg, gram)
    rest = np.setdiff1d(np.arange(n), sample, assume_unique=True)
    unit = _unit(x)
    protos, radii = prototypes_and_radii(unit[sample], labels[sample])
    labels[rest] = _nearest_covering(unit[rest], protos, radii)
    return renumber(labels)


def cluster_rows(x_nc: np.ndarray, cfg: ClusterConfig, gram: Gram | None = None) -> np.ndarray:
    """(N,) int64 labels, renumbered by size. DBSCAN+cosine → chunked exact path; any other
    algorithm/metric → samseg.core.cluster.cluster_embeddings."""
    if cfg.algorithm == "dbscan" and cfg.metric == "cosine":
        if x_nc.shape[0] < max(2, cfg.min_samples):  # same rule as cluster_embeddings
            return np.full(x_nc.shape[0], -1, dtype=np.int64)
        return renumber(dbscan_cosine_chunked(_unit(x_nc), cfg.eps, cfg.min_samples, gram=gram))
    from samseg.core.cluster import cluster_embeddings

    return np.asarray(cluster_embeddings(x_nc, cfg).labels, dtype=np.int64)


def _stack(
    embeddings_per_image: Sequence[np.ndarray], metric: str, image_names: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Stacked ΣN_i×C float32 and (n_images+1,) row offsets; errors name the image."""
    from samseg.core.cluster import ClusterInputError, check_embeddings

    if not len(embeddings_per_image):
        raise ValueError("cluster_batch needs at least one image")
    parts, dims = [], set()
    for i, emb in enumerate(embeddings_per_image):
        name = image_names[i] if image_names is not None else f"image {i}"
        arr = np.asarray(emb)
        if arr.ndim == 2 and arr.shape[0] == 0:
            parts.append(arr.astype(np.float32))
            dims.add(arr.shape[1])
            continue
        try:
            check_embeddings(arr, metric)
        except ClusterInputError as exc:
            raise ClusterInputError(f"{name}: {exc}") from exc
        parts.append(arr.astype(np.float32, copy=False))
        dims.add(arr.shape[1])
    if len(dims) != 1:
        raise ValueError(f"all images must have the same embedding size C, got {sorted(dims)}")
    offsets = np.cumsum([0] + [p.shape[0] for p in parts])
    return np.concatenate(parts, axis=0), offsets


# ------------------------------------------------------------- prototypes and assignment


def _unit(x_nc: np.ndarray) -> np.ndarray:
    """N×C float32 rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x_nc, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def prototypes_and_radii(unit_nc: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """K×C unit prototypes (normalised mean of the unit members) and (K,) float32 radii
    (max cosine distance member → prototype) for labels 0..K-1 (noise ignored)."""
    labels = np.asarray(labels, dtype=np.int64)
    k = int(labels.max()) + 1 if len(labels) and labels.max() >= 0 else 0
    c = unit_nc.shape[1]
    keep = labels >= 0
    sums = np.zeros((k, c), dtype=np.float64)
    np.add.at(sums, labels[keep], unit_nc[keep].astype(np.float64))
    protos = _unit(sums)
    radii = np.zeros(k, dtype=np.float32)
    if k:
        dist = 1.0 - np.einsum("nc,nc->n", unit_nc[keep], protos[labels[keep]])
        np.maximum.at(radii, labels[keep], np.maximum(dist, 0.0).astype(np.float32))
    return protos, radii


def build_classes(
    embeddings_per_image: Sequence[np.ndarray],
    results: Sequence[ClusterResult],
    image_names: Sequence[str],
    cfg: ClusterConfig | None = None,
    sample: dict[str, Any] | None = None,
) -> ClassTable:
    """ClassTable of a clustered batch (results from cluster_batch, same order as the images)."""
    import dataclasses

    if not (len(embeddings_per_image) == len(results) == len(image_names)):
        raise ValueError("embeddings_per_image, results and image_names must have the same length")
    if len(set(image_names)) != len(image_names):
        raise ValueError("image_names must be unique (they key classes.json's image lists)")
    for name, emb, res in zip(image_names, embeddings_per_image, results):
        if len(res.labels) != np.asarray(emb).shape[0]:
            raise ValueError(f"{name}: {len(res.labels)} labels for {np.asarray(emb).shape[0]} embeddings")
    unit = _unit(np.concatenate([np.asarray(e, dtype=np.float32) for e in embeddings_per_image], axis=0))
    labels = np.concatenate([np.asarray(r.labels, dtype=np.int64) for r in results])
    protos, radii = prototypes_and_radii(unit, labels)
    k = protos.shape[0]
    image_counts: list[dict[str, int]] = [{} for _ in range(k)]
    for name, res in zip(image_names, results):
        ids, counts = np.unique(res.labels[res.labels >= 0], return_counts=True)
        for c, cnt in zip(ids, counts):
            image_counts[int(c)][str(name)] = int(cnt)
    sizes = np.bincount(labels[labels >= 0], minlength=k).astype(np.int64)
    return ClassTable(
        prototypes=protos.astype(np.float32),
        radii=radii,
        sizes=sizes,
        image_counts=image_counts,
        image_names=[str(n) for n in image_names],
        n_noise=int((labels < 0).sum()),
        cluster=dataclasses.asdict(cfg) if cfg is not None else {},
        sample=dict(sample) if sample is not None else {"n_masks": int(len(labels)), "n_clustered": int(len(labels))},
    )


def assign_to_classes(embeddings_nc: np.ndarray, table: ClassTable, margin: float = 0.0) -> ClusterResult:
    """Label N×C embeddings with the table's class ids (NOT renumbered — stable over time).

    A mask gets the most similar prototype among those whose radius (+ `margin`, in cosine
    distance) covers it; no covering prototype → -1 (noise). No re-clustering.
    """
    x = np.asarray(embeddings_nc)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be N×C, got shape {x.shape}")
    if x.shape[0] and x.shape[1] != table.embedding_dim:
        raise ClassTableError(
            f"embeddings have C={x.shape[1]} but the classes were built from C={table.embedding_dim} "
            "(different model type?)"
        )
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf")
    return ClusterResult(labels=_nearest_covering(_unit(x), table.prototypes, table.radii + np.float32(margin)))


def _nearest_covering(unit_nc: np.ndarray, protos_kc: np.ndarray, radii_k: np.ndarray) -> np.ndarray:
    """(N,) int64: most similar prototype whose radius covers the row, else -1; chunked."""
    n, k = unit_nc.shape[0], protos_kc.shape[0]
    out = np.full(n, -1, dtype=np.int64)
    if not k or not n:
        return out
    # Tiny slack: a member's own distance, recomputed in float32, may exceed the stored
    # radius by rounding; without it a class could fail to cover its own members.
    min_sim = (1.0 - radii_k.astype(np.float32) - np.float32(1e-5))[None, :]
    protos = protos_kc.astype(np.float32)
    for lo, hi in row_chunks(n, k, BLOCK_FLOATS):
        sim = unit_nc[lo:hi] @ protos.T
        sim = np.where(sim >= min_sim, sim, -np.inf)
        best = sim.argmax(axis=1)
        ok = np.isfinite(sim[np.arange(hi - lo), best])
        out[lo:hi][ok] = best[ok]
    return out
