"""samseg.core.eval: hand-computable IoU / matching / ARI / NMI, and the directory edge."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from samseg.core.eval import EvalInputError, evaluate_dirs, evaluate_label_maps, iou_matrix


def _row(*spans, n: int = 30) -> np.ndarray:
    """1×n map from (start, stop, id) spans, 0 elsewhere."""
    m = np.zeros((1, n), np.int64)
    for a, b, v in spans:
        m[0, a:b] = v
    return m


def test_permuted_ids_score_perfectly():
    gt = np.zeros((20, 30), np.int64)
    gt[0:10, 0:10], gt[10:20, 0:15], gt[5:15, 20:30] = 1, 2, 3
    pred = np.choose(gt, [0, 7, 3, 5])  # 1→7, 2→3, 3→5, background stays 0
    res = evaluate_label_maps(pred, gt)
    assert res.per_class_iou == {1: 1.0, 2: 1.0, 3: 1.0}
    assert res.matching == {1: 7, 2: 3, 3: 5}
    assert res.miou == 1.0 and res.ari == pytest.approx(1.0) and res.nmi == pytest.approx(1.0)
    assert res.n_pred_clusters == 3


def test_half_overlap_is_one_third():
    gt = _row((0, 10, 1))
    pred = _row((5, 15, 4))  # 5 shared of 15 in the union
    res = evaluate_label_maps(pred, gt)
    assert res.per_class_iou == {1: pytest.approx(1 / 3)} and res.matching == {1: 4}
    assert res.miou == pytest.approx(1 / 3)


def test_unmatched_gt_class_scores_zero():
    gt = _row((0, 10, 1), (10, 20, 2))
    pred = _row((0, 10, 1))
    res = evaluate_label_maps(pred, gt)
    assert res.per_class_iou == {1: 1.0, 2: 0.0} and res.matching == {1: 1}
    assert res.miou == 0.5


def test_no_prediction_at_all():
    gt = _row((0, 10, 1))
    res = evaluate_label_maps(np.zeros_like(gt), gt)
    assert res.per_class_iou == {1: 0.0} and res.matching == {} and res.miou == 0.0 and res.n_pred_clusters == 0


def test_hungarian_beats_greedy():
    # IoU: G1-P1 = 6/14, G1-P2 = 4/10, G2-P1 = 4/10, G2-P2 = 0. Greedy would take G1-P1 (0.43)
    # and leave G2 with nothing; the optimum pairs G1-P2 and G2-P1 (0.4 + 0.4).
    gt = _row((0, 10, 1), (10, 14, 2))
    pred = _row((0, 6, 1), (10, 14, 1), (6, 10, 2))
    res = evaluate_label_maps(pred, gt)
    assert res.matching == {1: 2, 2: 1}
    assert res.per_class_iou == {1: pytest.approx(0.4), 2: pytest.approx(0.4)}
    assert res.miou == pytest.approx(0.4)


def test_matching_is_optimal_on_random_maps():
    rng = np.random.default_rng(0)
    for _ in range(5):
        gt, pred = rng.integers(0, 4, (12, 12)), rng.integers(0, 4, (12, 12))
        gt_ids, pred_ids, iou = iou_matrix(pred.reshape(-1), gt.reshape(-1))
        best = max(sum(iou[r, c] for r, c in enumerate(p)) for p in itertools.permutations(range(len(pred_ids)), len(gt_ids)))
        res = evaluate_label_maps(pred, gt)
        assert sum(res.per_class_iou.values()) == pytest.approx(best)


def test_ari_nmi_match_sklearn_over_all_pixels():
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rng = np.random.default_rng(1)
    gt, pred = rng.integers(0, 3, (10, 10)), rng.integers(0, 5, (10, 10))
    res = evaluate_label_maps(pred, gt)
    assert res.ari == pytest.approx(adjusted_rand_score(gt.ravel(), pred.ravel()))
    assert res.nmi == pytest.approx(normalized_mutual_info_score(gt.ravel(), pred.ravel()))


def test_ignore_index_pixels_do_not_count():
    gt = _row((0, 10, 1), (10, 15, 255))
    pred = _row((0, 15, 3))  # wrong only where GT says ignore
    assert evaluate_label_maps(pred, gt).per_class_iou == {1: pytest.approx(2 / 3), 255: 0.0}  # 255 is a class here
    res = evaluate_label_maps(pred, gt, ignore_index=255)
    assert res.per_class_iou == {1: 1.0}


def test_shape_mismatch_raises():
    with pytest.raises(EvalInputError, match="prediction is"):
        evaluate_label_maps(np.zeros((3, 4)), np.zeros((4, 3)))


# --- evaluate_dirs ------------------------------------------------------------------------


def _write(path, arr, dtype):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=dtype)).save(path)


@pytest.fixture
def dirs(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    a_gt = np.zeros((8, 12), np.int64)
    a_gt[:, :6] = 1
    _write(gt_dir / "a.png", a_gt, np.uint8)
    _write(pred_dir / "a" / "labels.png", np.where(a_gt == 1, 2, 0), np.uint16)  # perfect, renamed
    b_gt = _row((0, 10, 1), n=30)
    _write(gt_dir / "b.png", b_gt, np.uint8)
    _write(pred_dir / "b" / "labels.png", _row((5, 15, 300), n=30), np.uint16)  # IoU 1/3, id > 255
    (pred_dir / "extra").mkdir()
    return pred_dir, gt_dir


def test_evaluate_dirs_tables(dirs):
    per_image, per_class, summary = evaluate_dirs(*dirs)
    assert list(per_image["image"]) == ["a", "b"]
    assert per_image.set_index("image")["miou"].to_dict() == pytest.approx({"a": 1.0, "b": 1 / 3})
    assert list(per_class["pred_cluster"]) == [2, 300]
    assert summary["n_images"] == 2 and summary["mean_miou"] == pytest.approx(2 / 3)
    assert summary["mean_class_iou"] == pytest.approx(2 / 3)
    assert summary["unscored_predictions"] == ["extra"]


def test_evaluate_dirs_missing_prediction_names_file(dirs):
    pred_dir, gt_dir = dirs
    (pred_dir / "b" / "labels.png").unlink()
    with pytest.raises(EvalInputError, match=r"b/labels\.png: missing prediction"):
        evaluate_dirs(pred_dir, gt_dir)


def test_evaluate_dirs_size_mismatch_names_file(dirs):
    pred_dir, gt_dir = dirs
    _write(pred_dir / "a" / "labels.png", np.zeros((8, 11)), np.uint16)
    with pytest.raises(EvalInputError, match=r"a/labels\.png: size \(8, 11\)"):
        evaluate_dirs(pred_dir, gt_dir)


def test_evaluate_dirs_rejects_rgb_and_empty_gt(dirs, tmp_path):
    pred_dir, gt_dir = dirs
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(gt_dir / "a.png")
    with pytest.raises(EvalInputError, match=r"a\.png: label map must be single-channel"):
        evaluate_dirs(pred_dir, gt_dir)
    (tmp_path / "none").mkdir()
    with pytest.raises(EvalInputError, match="no ground-truth"):
        evaluate_dirs(pred_dir, tmp_path / "none")
