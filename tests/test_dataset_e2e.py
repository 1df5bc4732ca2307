"""Dataset-level classes end to end with the tiny-random SAM over ../shared/images.

tiny-random's masks are meaningless: this checks plumbing and consistency only (every id
in every labels.png is a class of classes.json, masks.json agrees, the contact sheet and
prototype assignment work on real-sized photos), never segmentation quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samseg.contact_sheet import contact_sheet, select_examples
from samseg.dataset import ClassTable, assign_to_classes, classify_batch

PHOTOS = ("letters.jpg", "bears.jpg", "plaza.jpg", "horses.jpg")
# Long side of the copies segmented here: full-size photos make the tiny-random AMG's
# full-resolution mask post-processing take minutes on CI's 2 cores; plumbing is the same.
SMALL_SIDE = 320


def small_copy(path: Path):
    """LoadedImage of a SMALL_SIDE-px PNG copy of the photo, keeping its file name."""
    import io

    from samseg.images import decode_image, load_image

    img = Image.fromarray(load_image(path).rgb)
    img.thumbnail((SMALL_SIDE, SMALL_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return decode_image(buf.getvalue(), path.name, uri=str(path))


@pytest.fixture(scope="module")
def batch_run(shared_images, tiny_model, smoke_cfg, tmp_path_factory):
    # 4×4 prompts (48 masks a photo, 192 in the batch) instead of smoke's 8×8: enough
    # masks to form batch classes, a quarter of the AMG time on 2 shared cores.
    cfg = smoke_cfg.replace(amg={"points_per_side": 4})
    from samseg.compose import compose_labels
    from samseg.export import write_outputs
    from samseg.pipeline import build_summary, segment_image

    out = tmp_path_factory.mktemp("dataset_run")
    images = [small_copy(shared_images / name) for name in PHOTOS]
    segs = [segment_image(tiny_model, img, cfg) for img in images]
    results, table = classify_batch([s.embeddings for s in segs], [img.name for img in images], cfg.cluster)
    for img, seg, res in zip(images, segs, results):
        label_map = compose_labels(seg.masks, res)
        summary = build_summary(img, tiny_model, cfg, seg)
        summary.update(classes="dataset", n_clusters=res.n_clusters, n_noise=res.n_noise, cluster_sizes=res.sizes())
        write_outputs(out / Path(img.name).stem, img, seg.masks, seg.embeddings, res, label_map, summary)
    (out / "classes.json").write_text(table.to_json())
    picks = select_examples(results, [s.masks.areas for s in segs], table.n_classes)
    sheet = contact_sheet(picks, lambda i: (images[i].rgb, segs[i].masks), table.sizes)
    Image.fromarray(sheet).save(out / "contact_sheet.png")
    return out, images, segs, results, table, picks


def test_every_label_id_is_a_class(batch_run):
    from samseg.export import read_label_png, read_outputs

    out, images, segs, results, _, _ = batch_run
    table = ClassTable.from_json((out / "classes.json").read_text(), source=str(out / "classes.json"))
    assert table.image_names == list(PHOTOS)
    assert int(table.sizes.sum()) + table.n_noise == sum(len(s.masks) for s in segs)
    for img, res in zip(images, results):
        d = out / Path(img.name).stem
        labels = read_label_png(d / "labels.png")
        assert labels.shape == img.rgb.shape[:2]
        ids = {int(v) - 1 for v in np.unique(labels) if v > 0}
        assert ids <= set(range(table.n_classes))
        for c in ids:  # a class painted in an image lists that image in classes.json
            assert img.name in table.image_counts[c]
        _, _, stored = read_outputs(d)
        assert np.array_equal(stored, res.labels)  # masks.json carries the dataset ids
        for c, n in enumerate(table.image_counts):
            assert int((stored == c).sum()) == n.get(img.name, 0)
        summary = json.loads((d / "summary.json").read_text())
        assert summary["classes"] == "dataset"


def test_members_are_covered_by_some_class(batch_run):
    _, _, segs, results, table, _ = batch_run
    for seg, res in zip(segs, results):
        again = assign_to_classes(seg.embeddings, table)
        member = res.labels >= 0
        # every clustered mask lies inside its own class's radius, so it is never noise here
        assert (again.labels[member] >= 0).all()


def test_contact_sheet_rows(batch_run):
    out, _, _, results, table, picks = batch_run
    sheet = np.asarray(Image.open(out / "contact_sheet.png"))
    assert sheet.ndim == 3 and sheet.shape[2] == 3
    assert len(picks) == table.n_classes
    for c, row in enumerate(picks):
        assert 0 < len(row) <= 6
        assert all(results[i].labels[m] == c for i, m in row)
