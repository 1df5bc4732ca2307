"""Dataset-level classes (samseg.core.dataset): synthetic batches with known features."""

from __future__ import annotations

import json

import numpy as np
import pytest

from samseg.core.cluster import ClusterInputError, cluster_embeddings
from samseg.core.config import ClusterConfig, PoolConfig
from samseg.core.dataset import (
    ClassTable,
    ClassTableError,
    assign_to_classes,
    classify_batch,
    cluster_batch,
    dbscan_cosine_chunked,
    eps_euclidean,
    renumber,
)
from samseg.core.pool import pool_embeddings
from samseg.core.types import ClusterResult, EncodedImage, ImageGeometry, MaskSet

C = 16
SIDE = 256  # 256-px square image → 1024-px input, one 16-px cell = 4 original pixels
RNG_KINDS = np.random.default_rng(7)
# Three "kinds of object" with unrelated directions, plus the background.
KINDS = {k: RNG_KINDS.normal(size=C).astype(np.float32) for k in ("bear", "horse", "sign", "background")}
CFG = ClusterConfig(algorithm="dbscan", eps=0.05, min_samples=3, metric="cosine")


def synthetic_image(objects: list[tuple[str, int, int, int]], seed: int) -> tuple[MaskSet, EncodedImage]:
    """Masks + per-pixel features standing in for the encoder: every cell under an object
    of kind k holds KINDS[k] plus 2 % noise. objects: (kind, y, x, size) in original pixels,
    multiples of 4 so they cover whole cells."""
    rng = np.random.default_rng(seed)
    geometry = ImageGeometry.for_image((SIDE, SIDE))
    grid = geometry.feature_hw[0]
    feats = np.tile(KINDS["background"][:, None, None], (1, grid, grid))
    masks = np.zeros((len(objects), SIDE, SIDE), dtype=bool)
    for i, (kind, y, x, size) in enumerate(objects):
        masks[i, y : y + size, x : x + size] = True
        feats[:, y // 4 : (y + size) // 4, x // 4 : (x + size) // 4] = KINDS[kind][:, None, None]
    feats = feats + 0.02 * np.abs(feats).mean() * rng.normal(size=feats.shape).astype(np.float32)
    return MaskSet.from_binary(masks), EncodedImage(features=feats.astype(np.float32), geometry=geometry)


BATCH = {
    "a.jpg": [("bear", 0, 0, 40), ("bear", 100, 100, 60), ("horse", 200, 0, 40)],
    "b.jpg": [("horse", 0, 0, 80), ("horse", 120, 120, 40), ("bear", 200, 200, 48)],
    "c.jpg": [("bear", 8, 200, 32), ("horse", 160, 40, 56)],
}


def batch_embeddings() -> tuple[list[str], list[np.ndarray], list[list[str]]]:
    names, embs, kinds = [], [], []
    for seed, (name, objects) in enumerate(BATCH.items()):
        masks, encoded = synthetic_image(objects, seed)
        names.append(name)
        embs.append(pool_embeddings(masks, encoded, PoolConfig()))
        kinds.append([o[0] for o in objects])
    return names, embs, kinds


def test_same_kind_same_id_across_images():
    names, embs, kinds = batch_embeddings()
    # Per image there are too few masks of a kind for min_samples=3: no per-image classes.
    assert all(cluster_embeddings(e, CFG).n_clusters == 0 for e in embs)
    results = cluster_batch(embs, CFG, image_names=names)
    id_of: dict[str, set[int]] = {}
    for res, ks in zip(results, kinds):
        for label, kind in zip(res.labels, ks):
            id_of.setdefault(kind, set()).add(int(label))
    assert id_of["bear"] == {0} or id_of["bear"] == {1}
    assert len(id_of["horse"]) == 1 and id_of["horse"] != id_of["bear"]
    assert -1 not in id_of["bear"] | id_of["horse"]


def test_class_table_contents_and_metrics():
    names, embs, kinds = batch_embeddings()
    results, table = classify_batch(embs, names, CFG)
    assert table.n_classes == 2 and table.n_noise == 0
    bear = int(results[0].labels[0])
    assert table.sizes[bear] == 4
    assert table.image_counts[bear] == {"a.jpg": 2, "b.jpg": 1, "c.jpg": 1}
    assert np.allclose(np.linalg.norm(table.prototypes, axis=1), 1.0, atol=1e-5)
    # Prototype points at the kind's feature direction; radius covers every member, and small.
    cos = table.prototypes[bear] @ KINDS["bear"] / np.linalg.norm(KINDS["bear"])
    assert cos > 0.99
    assert 0 < table.radii[bear] < 0.01
    m = table.metrics()
    assert m["n_classes"] == 2 and m["n_noise"] == 0 and m["n_masks"] == 8
    assert m[f"class_coverage.{bear}"] == 1.0
    assert table.sample == {"n_masks": 8, "n_clustered": 8, "max_cluster": 200_000, "seed": 0}


def test_new_image_assigned_by_prototype_and_unlike_object_is_noise():
    names, embs, _ = batch_embeddings()
    results, table = classify_batch(embs, names, CFG)
    bear, horse = int(results[0].labels[0]), int(results[0].labels[2])
    masks, encoded = synthetic_image([("horse", 0, 0, 44), ("sign", 100, 100, 40), ("bear", 180, 180, 64)], seed=99)
    new = assign_to_classes(pool_embeddings(masks, encoded, PoolConfig()), table)
    assert new.labels.tolist() == [horse, -1, bear]


def test_assign_margin_and_covering_rule():
    protos = np.eye(3, dtype=np.float32)[:2]  # class 0 = e0, class 1 = e1
    table = ClassTable(
        prototypes=protos, radii=np.array([0.01, 0.5], np.float32), sizes=np.array([5, 5]),
        image_counts=[{"a": 5}, {"a": 5}], image_names=["a"],
    )
    # Nearer to class 0 but outside its small radius, inside class 1's big one → class 1.
    x = np.array([[0.8, 0.6, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    assert assign_to_classes(x, table).labels.tolist() == [1, 0, -1]
    assert assign_to_classes(x, table, margin=1.0).labels.tolist() == [0, 0, 0]


def test_json_round_trip_and_errors():
    names, embs, _ = batch_embeddings()
    _, table = classify_batch(embs, names, CFG)
    text = table.to_json()
    back = ClassTable.from_json(text)
    assert np.array_equal(back.prototypes, table.prototypes)
    assert np.array_equal(back.radii, table.radii)
    assert back.image_counts == table.image_counts and back.image_names == names
    d = json.loads(text)
    assert d["classes"][0]["images"] == list(table.image_counts[0])
    assert d["cluster"]["eps"] == 0.05
    with pytest.raises(ClassTableError, match="runs/x/classes.json: not valid JSON"):
        ClassTable.from_json("{", source="runs/x/classes.json")
    with pytest.raises(ClassTableError, match="not a samseg classes file"):
        ClassTable.from_json(json.dumps({"classes": []}))
    d["classes"][0]["prototype"] = d["classes"][0]["prototype"][:-1]
    with pytest.raises(ClassTableError, match="malformed"):
        ClassTable.from_json(json.dumps(d))
    with pytest.raises(ClassTableError, match="C=8 but the classes were built from C=16"):
        assign_to_classes(np.ones((2, 8), np.float32), table)


def blobs(n_per: int, k: int, dim: int, spread: float, n_noise: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim))
    pts = [c + spread * rng.normal(size=(n_per, dim)) for c in centers]
    pts.append(rng.normal(size=(n_noise, dim)) * 3)
    return np.concatenate(pts).astype(np.float32)


def test_chunked_dbscan_equals_sklearn():
    from sklearn.cluster import DBSCAN

    x = blobs(n_per=60, k=5, dim=12, spread=0.08, n_noise=40, seed=1)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    for eps, ms in ((0.01, 5), (0.02, 10), (0.3, 4)):
        ref = renumber(DBSCAN(eps=eps, min_samples=ms, metric="cosine").fit_predict(x.astype(np.float64)))
        # block of 256 floats → a few rows per chunk: exercises the chunk-by-chunk merging
        got = renumber(dbscan_cosine_chunked(x, eps, ms, block_floats=256))
        assert np.array_equal(got, ref), (eps, ms)
        assert got.max() >= 0
    # euclidean DBSCAN on unit vectors with sqrt(2·eps) is the same clustering
    eu = renumber(DBSCAN(eps=eps_euclidean(0.02), min_samples=10).fit_predict(x.astype(np.float64)))
    assert np.array_equal(eu, renumber(dbscan_cosine_chunked(x, 0.02, 10)))


def test_the_block_product_is_a_hook_and_torchs_gives_the_same_classes():
    """samseg.sam.gram: on CUDA the fit's block products run in torch; every product goes through
    the hook (counted here), and torch's — run on the CPU here, the same code a GPU runs — gives
    the same labels as numpy's, batch path included."""
    from samseg.sam.gram import gram_for, torch_gram

    x = blobs(n_per=60, k=5, dim=12, spread=0.08, n_noise=40, seed=1)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    calls = []

    def counted(a, b):
        calls.append((a.shape[0], b.shape[0]))
        return torch_gram("cpu")(a, b)

    for eps, ms in ((0.01, 5), (0.02, 10), (0.3, 4)):
        ref = renumber(dbscan_cosine_chunked(x, eps, ms, block_floats=256))
        assert np.array_equal(renumber(dbscan_cosine_chunked(x, eps, ms, block_floats=256, gram=counted)), ref)
    assert len(calls) > 100  # every block product went through the hook (256-float blocks: many)
    parts = [x[:100], x[100:]]
    assert all(np.array_equal(a.labels, b.labels) for a, b in zip(
        cluster_batch(parts, CFG), cluster_batch(parts, CFG, gram=torch_gram("cpu"))))
    assert gram_for("cpu") is None  # a CPU run keeps numpy's BLAS
    import ast
    import inspect

    from samseg.core import cosine_dbscan

    products = [n for n in ast.walk(ast.parse(inspect.getsource(cosine_dbscan)))
                if isinstance(n, ast.BinOp) and isinstance(n.op, ast.MatMult)]
    assert len(products) == 1  # every product is the hook's (numpy's own: _numpy_gram)
    import torch

    matmul, seen = torch.backends.cuda.matmul, []
    before, cpu = matmul.fp32_precision, torch.Tensor.cpu
    try:
        matmul.fp32_precision = "tf32"  # a process that allows TF32 for its own work
        torch.Tensor.cpu = lambda t: (seen.append(matmul.fp32_precision), cpu(t))[1]  # the state at the product
        torch_gram("cpu")(x[:3], x[:4])
        assert seen == ["ieee"] and matmul.fp32_precision == "tf32"  # fp32 for the block, its setting after
    finally:
        torch.Tensor.cpu, matmul.fp32_precision = cpu, before


def test_a_small_fit_on_an_auto_device_imports_no_torch():
    """gram_for decides at the first full-size block: a fit smaller than one never imports torch."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from samseg.sam.gram import gram_for\n"
            "x = np.eye(6, dtype=np.float32)\n"
            "assert (gram_for('auto')(x, x) == x).all()\n"
            "print('torch' in sys.modules)\n")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_sampled_path_matches_full_partition():
    x = blobs(n_per=150, k=4, dim=16, spread=0.05, n_noise=0, seed=3)
    parts = [x[:200], x[200:450], x[450:]]
    full = np.concatenate([r.labels for r in cluster_batch(parts, CFG)])
    sampled = np.concatenate([r.labels for r in cluster_batch(parts, CFG, max_cluster=120, seed=5)])
    assert full.max() == 3 and sampled.max() == 3
    # same partition (ids by size may swap for equal sizes): a bijection between ids
    pairs = {(int(a), int(b)) for a, b in zip(full, sampled) if b >= 0}
    assert len(pairs) == 4 and len({a for a, _ in pairs}) == 4
    assert (sampled >= 0).mean() > 0.9  # the rest lands inside some radius
    again = np.concatenate([r.labels for r in cluster_batch(parts, CFG, max_cluster=120, seed=5)])
    assert np.array_equal(sampled, again)  # seeded


@pytest.mark.parametrize("algorithm", ["hdbscan", "agglomerative"])
def test_other_algorithms_share_ids(algorithm):
    x = blobs(n_per=30, k=3, dim=8, spread=0.02, n_noise=0, seed=4)
    parts = [x[::2], x[1::2]]  # every blob in both images
    cfg = ClusterConfig(algorithm=algorithm, min_samples=3, metric="cosine", distance_threshold=0.05)
    a, b = cluster_batch(parts, cfg)
    assert a.n_clusters == 3 and b.n_clusters == 3
    truth = np.repeat(np.arange(3), 30)
    assert np.array_equal(a.labels, renumber(truth[::2])) or len(set(zip(a.labels, truth[::2]))) == 3
    assert set(zip(a.labels.tolist(), truth[::2].tolist())) == set(zip(b.labels.tolist(), truth[1::2].tolist()))


def test_bad_inputs_name_the_image():
    good = np.ones((3, 4), np.float32)
    bad = good.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ClusterInputError, match="^b.jpg: embedding row 1"):
        cluster_batch([good, bad], CFG, image_names=["a.jpg", "b.jpg"])
    with pytest.raises(ValueError, match="same embedding size"):
        cluster_batch([good, np.ones((2, 5), np.float32)], CFG)
    with pytest.raises(ValueError, match="at least one image"):
        cluster_batch([], CFG)


def test_images_without_masks_and_tiny_batches():
    names, embs, _ = batch_embeddings()
    embs = embs[:1] + [np.zeros((0, C), np.float32)] + embs[1:]
    names = names[:1] + ["empty.jpg"] + names[1:]
    results, table = classify_batch(embs, names, CFG)
    assert len(results[1].labels) == 0 and table.n_classes == 2
    assert table.image_names[1] == "empty.jpg" and table.metrics()["class_coverage.0"] == 0.75
    tiny = cluster_batch([np.ones((2, C), np.float32)], CFG)  # fewer masks than min_samples
    assert tiny[0].labels.tolist() == [-1, -1]
    _, empty = classify_batch([np.zeros((0, C), np.float32)], ["x"], CFG)
    assert empty.n_classes == 0 and assign_to_classes(np.ones((2, C)), empty).labels.tolist() == [-1, -1]


def _renumber_by_definition(labels: np.ndarray) -> np.ndarray:
    """The rule spelled out one cluster at a time: size desc, ties by first member; -1 stays."""
    ids = [int(c) for c in np.unique(labels) if c >= 0]
    order = sorted(ids, key=lambda c: (-int((labels == c).sum()), int(np.flatnonzero(labels == c)[0])))
    out = np.full(labels.shape, -1, np.int64)
    for new, c in enumerate(order):
        out[labels == c] = new
    return out


def test_renumber_matches_its_definition():
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels = rng.integers(-1, 7, size=200)
        assert np.array_equal(renumber(labels), _renumber_by_definition(labels))


# ------------------------------------------------------------------- contact sheet


def test_select_examples_round_robin_largest_first():
    from samseg.core.contact_sheet import select_examples

    results = [ClusterResult(np.array([0, 0, 1, -1, 0])), ClusterResult(np.array([0, 1, 0]))]
    areas = [np.array([10, 50, 5, 99, 30]), np.array([7, 8, 9])]
    picks = select_examples(results, areas, n_classes=3, per_class=4)
    # class 0: image 0's largest (mask 1), image 1's largest (mask 2), then the next of each
    assert picks[0] == [(0, 1), (1, 2), (0, 4), (1, 0)]
    assert picks[1] == [(0, 2), (1, 1)]
    assert picks[2] == []
    assert select_examples(results, areas, n_classes=2, per_class=1) == [[(0, 1)], [(0, 2)]]


def test_contact_sheet_layout_colours_and_cutouts():
    from samseg.core.contact_sheet import TILE, contact_sheet, select_examples
    from samseg.core.render import class_color

    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[..., 1] = 200  # a green photo
    m = np.zeros((2, 40, 60), bool)
    m[0, 5:15, 10:40] = True
    m[1, 20:40, 0:10] = True
    masks = MaskSet.from_binary(m)
    results = [ClusterResult(np.array([1, 0]))]
    picks = select_examples(results, [masks.areas], n_classes=2)
    loads = []
    sheet = contact_sheet(picks, lambda i: loads.append(i) or (rgb, masks), sizes=[1, 1])
    assert loads == [0]  # each needed image is loaded once
    assert sheet.dtype == np.uint8 and sheet.shape[0] == 2 * (TILE + 8)
    for c in range(2):  # the colour bar of row c is class_color(c), as in overlay.png
        assert tuple(sheet[c * (TILE + 8) + 10, 6]) == class_color(c)
    tile0 = sheet[4 : 4 + TILE, 88 : 88 + TILE].reshape(-1, 3)
    assert (tile0 == (0, 200, 0)).all(axis=1).sum() > TILE * TILE // 4  # the cut-out's pixels
    assert (tile0 == (255, 255, 255)).all(axis=1).any()  # transparent → white


def test_a_named_class_shows_its_name_on_the_contact_sheet_within_the_gutter():
    from samseg.core.contact_sheet import _GUTTER, TILE, _fitted, render_contact_sheet

    cut = np.full((10, 20, 4), 255, np.uint8)
    plain = render_contact_sheet([[cut], [cut]], sizes=[3, 4])
    named = render_contact_sheet([[cut], [cut]], sizes=[3, 4], names={1: "a traffic light on a long pole"})
    row = slice(TILE + 8, 2 * (TILE + 8))  # class 1's row; class 0 has no name and is drawn as before
    assert (named[: TILE + 8] == plain[: TILE + 8]).all()
    assert (named[row, :_GUTTER] != plain[row, :_GUTTER]).any()
    assert (named[:, _GUTTER:] == plain[:, _GUTTER:]).all()  # a long name never runs over the cut-outs
    assert _fitted("a traffic light on a long pole", 66).endswith("..")
    assert _fitted("Straße café", 500) == "Stra?e cafe"  # what cv2's ASCII font can draw


def test_contact_sheet_caps_rows_and_rejects_bad_cutouts():
    from samseg.core.contact_sheet import ContactSheetError, fit_tile, render_contact_sheet

    cut = np.full((10, 20, 4), 255, np.uint8)
    sheet = render_contact_sheet([[cut]] * 5, max_rows=2, tile=32)
    assert sheet.shape[0] == 2 * 40 + 20  # two rows + the "+3 more classes" line
    assert render_contact_sheet([]).shape[0] > 0
    t = fit_tile(cut, 32)
    assert t.shape == (32, 32, 3) and (t[16] == 255).all() and (t[0] == 255).all()
    with pytest.raises(ContactSheetError, match="uint8"):
        fit_tile(np.zeros((4, 4, 4), np.float32), 32)
