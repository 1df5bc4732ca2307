"""Synthetic runs of KNOWN structure for the web-UI tests (no SAM needed).

12 disjoint 16×16 rectangle masks on a 48×96 image whose embeddings form group A (6 masks),
group B (4) and 2 outliers: DBSCAN(cosine, eps 0.06, min_samples 3) gives 2 clusters + 2 noise.
"""

from __future__ import annotations

import numpy as np
from mlflow_store import sqlite_uri

H, W = 48, 96
GROUP_A, GROUP_B, OUTLIERS = list(range(6)), list(range(6, 10)), [10, 11]


def rect_masks() -> np.ndarray:
    """12×H×W bool: disjoint 16×16 rectangles on a 3×6 grid (row-major)."""
    masks = np.zeros((12, H, W), bool)
    for i in range(12):
        r, c = divmod(i, 6)
        masks[i, r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16] = True
    return masks


def embeddings(seed: int = 0) -> np.ndarray:
    """12×8 float32: groups A and B on axes 0 and 1, outliers on axes 2 and 3, tiny noise."""
    rng = np.random.default_rng(seed)
    emb = np.zeros((12, 8), np.float32)
    emb[GROUP_A, 0] = 1.0
    emb[GROUP_B, 1] = 1.0
    emb[OUTLIERS[0], 2] = 1.0
    emb[OUTLIERS[1], 3] = 1.0
    return emb + rng.normal(0, 0.01, emb.shape).astype(np.float32)


def sqlite_store(tmp, experiment: str, monkeypatch) -> list:
    """Point MLflow + the stage cache at `tmp` (SQLite store, artifacts under tmp) and write
    two random H×W RGB images; returns their paths [alpha.png, beta.png]."""
    from mlflow import MlflowClient
    from PIL import Image

    uri = sqlite_uri(tmp / 'mlflow.db')
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SAMSEG_CACHE", str(tmp / "stage-cache"))
    # The experiment's artifacts go under tmp (MLflow would default to ./mlruns in the cwd).
    MlflowClient(uri).create_experiment(experiment, artifact_location=(tmp / "artifacts").as_uri())
    rng = np.random.default_rng(1)
    paths = []
    for name in ("alpha.png", "beta.png"):
        p = tmp / "images" / name
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def write_image_outputs(out_dir, image_path, seed: int = 0) -> dict:
    """One synthetic image's outputs (samseg.edges.image_dir layout: rect_masks, embeddings(seed),
    per-image SMOKE clustering) written to `out_dir`; returns its summary.json dict."""
    from samseg.core.config import SMOKE
    from samseg.edges.image_dir import write_image_dir
    from samseg.edges.images import load_image
    from samseg.core.cluster import cluster_embeddings
    from samseg.core.compose import compose_labels
    from samseg.core.types import MaskSet

    image = load_image(image_path)
    masks = MaskSet.from_binary(rect_masks())
    emb = embeddings(seed)
    clusters = cluster_embeddings(emb, SMOKE.cluster)
    label_map = compose_labels(masks, clusters)
    summary = {
        "samseg_version": "test",
        "image": {"file_name": image.name, "uri": image.uri, "sha256": image.sha256, "hw": list(image.hw)},
        "model": {"type": "tiny-random", "checkpoint_sha256": "c" * 64, "checkpoint_path": None, "device": "cpu"},
        "config": SMOKE.flat(),
        "embedding_dim": int(emb.shape[1]),
        "n_masks": len(masks),
        "n_clusters": clusters.n_clusters,
        "n_noise": clusters.n_noise,
        "cluster_sizes": clusters.sizes(),
        "seconds": {"cluster": 0.001},
    }
    write_image_dir(out_dir, image, masks, emb, clusters, label_map, summary)
    return summary


def write_two_runs(tmp) -> None:
    """`tmp/images/{alpha,beta}.png` (seeded noise) and their outputs in `tmp/out/<name>/`: the export tests' input."""
    import numpy as np
    from PIL import Image

    for k, name in enumerate(("alpha", "beta")):
        img = tmp / "images" / f"{name}.png"
        img.parent.mkdir(exist_ok=True)
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(img)
        write_image_outputs(tmp / "out" / name, img, seed=k)
