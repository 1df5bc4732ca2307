"""Score predicted class maps against ground-truth class maps.

Both maps are H×W integer arrays. Ground truth: 0 = background, ids >= 1 = classes.
Prediction: 0 = no class, ids >= 1 = clusters (samseg writes cluster c as c + 1).
Cluster ids carry no meaning, so each GT class is matched to at most one predicted
cluster by the Hungarian algorithm (`scipy.optimize.linear_sum_assignment`) maximising
the summed IoU; an unmatched GT class scores IoU 0. mIoU is the mean over GT classes.
ARI and NMI (`sklearn.metrics`) compare the two pixel partitions as a whole,
background / unlabelled (0) included as one more group on each side.

`evaluate_dirs` is the file edge: pred_dir/<stem>/labels.png against gt_dir/<stem>.png.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import numpy as np


class EvalInputError(ValueError):
    """Label maps that cannot be compared (missing file, size mismatch, not single-channel)."""


@dataclass(frozen=True)
class EvalResult:
    """Scores of one predicted map against one GT map.

    per_class_iou: GT id → IoU with its matched cluster (0.0 when unmatched).
    matching: GT id → matched predicted id (GT classes left unmatched are absent).
    miou: mean of per_class_iou (NaN when the GT has no class). ari, nmi: over pixels.
    n_pred_clusters: predicted ids >= 1 present in the (non-ignored) map.
    """

    per_class_iou: dict[int, float]
    matching: dict[int, int]
    miou: float
    ari: float
    nmi: float
    n_pred_clusters: int = 0


def iou_matrix(pred_hw: np.ndarray, gt_hw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gt_ids (G,), pred_ids (P,), G×P IoU float64) over classes >= 1 of each map (1-D pixel arrays)."""
    gt_ids, g_inv = np.unique(gt_hw, return_inverse=True)
    pred_ids, p_inv = np.unique(pred_hw, return_inverse=True)
    joint = np.bincount(g_inv * len(pred_ids) + p_inv, minlength=len(gt_ids) * len(pred_ids))
    joint = joint.reshape(len(gt_ids), len(pred_ids)).astype(np.float64)
    g_keep, p_keep = gt_ids >= 1, pred_ids >= 1
    inter = joint[g_keep][:, p_keep]
    g_area = joint.sum(axis=1)[g_keep]
    p_area = joint.sum(axis=0)[p_keep]
    union = g_area[:, None] + p_area[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return gt_ids[g_keep].astype(np.int64), pred_ids[p_keep].astype(np.int64), iou


def evaluate_label_maps(pred_hw: np.ndarray, gt_hw: np.ndarray, ignore_index: int | None = None) -> EvalResult:
    """Hungarian-matched per-class IoU, mIoU, ARI and NMI of one H×W prediction vs one H×W GT.

    Pixels where gt == ignore_index are left out of every score.
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    pred, gt = np.asarray(pred_hw), np.asarray(gt_hw)
    if pred.shape != gt.shape:
        raise EvalInputError(f"prediction is {pred.shape[:2]}, ground truth is {gt.shape[:2]}")
    pred, gt = pred.reshape(-1).astype(np.int64), gt.reshape(-1).astype(np.int64)
    if ignore_index is not None:
        keep = gt != ignore_index
        pred, gt = pred[keep], gt[keep]
    gt_ids, pred_ids, iou = iou_matrix(pred, gt)
    per_class = {int(g): 0.0 for g in gt_ids}
    matching: dict[int, int] = {}
    if iou.size:
        rows, cols = linear_sum_assignment(iou, maximize=True)
        for r, c in zip(rows, cols):
            if iou[r, c] > 0:  # a zero-overlap pairing is not a match
                per_class[int(gt_ids[r])] = float(iou[r, c])
                matching[int(gt_ids[r])] = int(pred_ids[c])
    miou = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    if len(gt):
        ari = float(adjusted_rand_score(gt, pred))
        nmi = float(normalized_mutual_info_score(gt, pred))
    else:
        ari = nmi = float("nan")
    return EvalResult(per_class, matching, miou, ari, nmi, n_pred_clusters=len(pred_ids))


def read_label_png(path: Path) -> np.ndarray:
    """H×W int64 from a single-channel PNG (8-bit, 16-bit, 32-bit or palette indices)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                raise EvalInputError(f"{path}: label map must be single-channel, got PIL mode {img.mode}")
            arr = np.array(img)
    except (OSError, SyntaxError) as exc:
        raise EvalInputError(f"{path}: cannot read label PNG ({exc})") from exc
    return arr.astype(np.int64)


def evaluate_dirs(pred_dir: str | Path, gt_dir: str | Path, ignore_index: int | None = None):
    """Score every gt_dir/<stem>.png against pred_dir/<stem>/labels.png.

    Returns (per_image DataFrame [image, n_gt_classes, n_pred_clusters, miou, ari, nmi],
    per_class DataFrame [image, gt_class, pred_cluster (-1 unmatched), iou],
    summary dict). Predictions without GT are not scored; they are listed in
    summary["unscored_predictions"]. A GT without prediction or a size mismatch raises.
    """
    import pandas as pd

    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if not gt_dir.is_dir():
        raise EvalInputError(f"{gt_dir}: ground-truth directory not found")
    gt_files = sorted(gt_dir.glob("*.png"))
    if not gt_files:
        raise EvalInputError(f"{gt_dir}: no ground-truth *.png files")
    images, classes = [], []
    for gt_path in gt_files:
        pred_path = pred_dir / gt_path.stem / "labels.png"
        if not pred_path.is_file():
            raise EvalInputError(f"{pred_path}: missing prediction for ground truth {gt_path.name}")
        pred, gt = read_label_png(pred_path), read_label_png(gt_path)
        if pred.shape != gt.shape:
            raise EvalInputError(f"{pred_path}: size {pred.shape} does not match ground truth {gt_path} {gt.shape}")
        res = evaluate_label_maps(pred, gt, ignore_index)
        images.append(
            {"image": gt_path.stem, "n_gt_classes": len(res.per_class_iou), "n_pred_clusters": res.n_pred_clusters,
             "miou": res.miou, "ari": res.ari, "nmi": res.nmi}
        )
        for g, iou in res.per_class_iou.items():
            classes.append({"image": gt_path.stem, "gt_class": g, "pred_cluster": res.matching.get(g, -1), "iou": iou})
    per_image = pd.DataFrame(images, columns=["image", "n_gt_classes", "n_pred_clusters", "miou", "ari", "nmi"])
    per_class = pd.DataFrame(classes, columns=["image", "gt_class", "pred_cluster", "iou"])
    scored = {p["image"] for p in images}
    unscored = sorted(p.name for p in pred_dir.iterdir() if p.is_dir() and p.name not in scored) if pred_dir.is_dir() else []
    summary = {
        "n_images": len(per_image),
        "mean_miou": float(per_image["miou"].mean()),
        "mean_ari": float(per_image["ari"].mean()),
        "mean_nmi": float(per_image["nmi"].mean()),
        "mean_class_iou": float(per_class["iou"].mean()) if len(per_class) else float("nan"),
        "unscored_predictions": unscored,
    }
    return per_image, per_class, summary


# ---------------------------------------------------------------- names


def name_scores(pred_hw: np.ndarray, pred_names: dict[int, str], gt_hw: np.ndarray, gt_names: dict[int, str],
                ignore_index: int | None = None) -> dict[str, float]:
    """How well one image's classes are named (labelled pixels only: GT > 0, not ignore_index).

    pred_hw: labels.png values (c + 1 = class c), pred_names: {class c: its name} (unnamed ones
    absent); gt_hw: GT ids, gt_names: {GT id: its name}. Returns counts of predicted `classes`
    (with a labelled pixel), `named` ones, `correct` ones (the name of the GT class they overlap
    most), and `name_miou`: the mean, over the GT names present, of the IoU between the pixels
    predicted with that name and the pixels labelled with it (NaN when the GT has no class)."""
    valid = gt_hw > 0
    if ignore_index is not None:
        valid &= gt_hw != ignore_index
    pred, gt = pred_hw[valid].astype(np.int64), gt_hw[valid].astype(np.int64)
    classes = [int(c) for c in np.unique(pred) if c > 0]
    named = correct = 0
    for c in classes:
        name = pred_names.get(c - 1)
        if name is None:
            continue
        named += 1
        majority = int(np.bincount(gt[pred == c]).argmax())
        correct += name == gt_names.get(majority)
    vocab = sorted(set(gt_names.values()) | set(pred_names.values()))
    index = {n: k for k, n in enumerate(vocab)}
    pred_name = np.full(pred.shape, -1, np.int64)  # the name index of each pixel's class (-1: unnamed, no class)
    for c in classes:
        if pred_names.get(c - 1) is not None:
            pred_name[pred == c] = index[pred_names[c - 1]]
    gt_name = np.full(gt.shape, -2, np.int64)  # -2: a GT id without a name never matches
    for g in np.unique(gt):
        if int(g) in gt_names:
            gt_name[gt == g] = index[gt_names[int(g)]]
    ious = []
    for k in sorted({int(v) for v in np.unique(gt_name) if v >= 0}):
        inter = np.count_nonzero((pred_name == k) & (gt_name == k))
        ious.append(inter / np.count_nonzero((pred_name == k) | (gt_name == k)))
    return {"classes": len(classes), "named": named, "correct": correct,
            "name_miou": float(np.mean(ious)) if ious else float("nan")}


def read_gt_names(path: str | Path) -> dict[int, str]:
    """names.txt beside the GT maps: line k names GT id k (from 1); blank lines and # comments
    name nothing."""
    names = {}
    for k, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        name = line.split("#", 1)[0].strip()
        if name:
            names[k] = name
    return names


def evaluate_names_dirs(pred_dir: str | Path, gt_dir: str | Path, gt_names: dict[int, str],
                        ignore_index: int | None = None) -> dict[str, float]:
    """`name_scores` over every gt_dir/<stem>.png against pred_dir/<stem>/ (labels.png and the
    class names in its summary.json): name_accuracy (correct / named classes), named_fraction
    (named / classes) and mean_name_miou (over images)."""
    import json

    rows = []
    for gt_path in sorted(Path(gt_dir).glob("*.png")):
        d = Path(pred_dir) / gt_path.stem
        summary = json.loads((d / "summary.json").read_text(encoding="utf-8"))
        pred_names = {int(c): str(n) for c, n in (summary.get("class_names") or {}).items()}
        rows.append(name_scores(read_label_png(d / "labels.png"), pred_names, read_label_png(gt_path), gt_names,
                                ignore_index))
    named, classes = sum(r["named"] for r in rows), sum(r["classes"] for r in rows)
    mious = [r["name_miou"] for r in rows if r["name_miou"] == r["name_miou"]]
    return {"name_accuracy": sum(r["correct"] for r in rows) / named if named else float("nan"),
            "named_fraction": named / classes if classes else float("nan"),
            "mean_name_miou": float(np.mean(mious)) if mious else float("nan")}
