"""Which embedding makes better classes: {backbones} × {eps auto, a fixed eps} over a labelled
folder, each scored by `samseg eval` (Hungarian mIoU, ARI, NMI), one table plus one MLflow run
per combination.

    python -m benchmarks.quality DATA_DIR [--model vit_h] [--preset default]
        [--backbones sam dinov2-s dinov2-b dinov3-b] [--eps auto 0.06] [--out DIR] [--mlflow EXPERIMENT]

DATA_DIR holds IMAGE.jpg + IMAGE.png pairs (the PNG: class ids per pixel, 0 = unlabelled), the
layout `samseg eval` reads; docs/features.md has the recipe that builds one from COCO-Stuff-27.
With DATA_DIR/names.txt (line k names class id k), the classes are also named, that file being
the vocabulary (`--names`, with `--namer`), and each row adds how well: name_accuracy (named
classes whose name is the GT name of the class they overlap most), named_fraction, and
name_miou (IoU of the pixels given each GT name with the pixels labelled with it;
samseg.core.eval.name_scores).
Every combination runs `samseg segment` itself (in this process, one shared stage cache: the
masks are computed once, each backbone's features once) into OUT/<backbone>-eps<eps>/, then
scores it. The weights must be there (`samseg weights download ...`); on the development
machines, which have none, it runs as a smoke test on tiny-random weights and its numbers
mean nothing. Writes OUT/quality.json and OUT/quality.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from benchmarks.run import REPO

IMAGE_SUFFIXES = (".jpg", ".jpeg")
COLUMNS = ("backbone", "eps", "mean_miou", "mean_ari", "mean_nmi", "n_images", "eps_chosen")
NAME_COLUMNS = ("name_accuracy", "named_fraction", "mean_name_miou")
NAMES_TXT = "names.txt"


class QualityError(ValueError):
    """A data folder the harness cannot score (one line)."""


def labelled_images(data: Path) -> list[Path]:
    """The IMAGE.jpg files of `data` that have an IMAGE.png beside them."""
    if not data.is_dir():
        raise QualityError(f"{data}: not a directory")
    images = sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.with_suffix(".png").is_file())
    if not images:
        raise QualityError(f"{data}: no IMAGE.jpg with an IMAGE.png of class ids beside it")
    return images


def run_combo(images: list[Path], data: Path, out: Path, backbone: str, eps: str, model: str, preset: str,
              cache: Path, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """`samseg segment` with this backbone and eps, then `samseg eval` against the labels: one row."""
    from samseg.apps.cli import main as samseg
    from samseg.core.eval import evaluate_dirs, evaluate_names_dirs, read_gt_names

    pred = out / f"{backbone}-eps{eps}"
    names = data / NAMES_TXT
    naming = ("--names", str(names)) if names.is_file() else ()
    argv = ["segment", *map(str, images), "--out", str(pred), "--model", model, "--preset", preset,
            "--features", backbone, "--eps", eps, "--cache", str(cache), "--no-track", "-q", *naming, *extra]
    rc = samseg(argv)
    if rc != 0:
        return {"backbone": backbone, "eps": eps, "error": f"samseg segment exited {rc}"}
    _, per_class, summary = evaluate_dirs(pred, data)
    chosen = sorted({json.loads((d / "summary.json").read_text()).get("eps_auto", {}).get("eps") for d in pred.iterdir()
                     if (d / "summary.json").is_file()} - {None})
    named = evaluate_names_dirs(pred, data, read_gt_names(names)) if naming else {}
    return {"backbone": backbone, "eps": eps, "pred_dir": str(pred), "eps_chosen": chosen,
            **{k: summary[k] for k in ("mean_miou", "mean_ari", "mean_nmi", "n_images")}, **named,
            "per_class": per_class.to_dict(orient="records")}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per combination, best mIoU first."""
    def cell(row: dict[str, Any], key: str) -> str:
        v = row.get(key, "")
        if isinstance(v, float):
            return f"{v:.4f}"
        if isinstance(v, list):
            return ", ".join(f"{x:.4g}" for x in v)
        return str(v)

    ranked = sorted(rows, key=lambda r: -(r.get("mean_miou") if isinstance(r.get("mean_miou"), float) else -1.0))
    columns = COLUMNS + (NAME_COLUMNS if any(k in r for r in rows for k in NAME_COLUMNS) else ())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in ranked:
        lines.append("| " + " | ".join(r.get("error", "") if k == "mean_miou" and "error" in r else cell(r, k)
                                       for k in columns) + " |")
    return "\n".join(lines)


def log_rows(rows: list[dict[str, Any]], experiment: str, model: str, preset: str, data: Path) -> list[str]:
    """One FINISHED MLflow run per combination: params backbone/eps/model, metrics mIoU/ARI/NMI."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from samseg.edges.mlflow.client import tracking_uri
    from samseg.edges.run_schema import TAG_KIND

    client = MlflowClient(tracking_uri=tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    ids = []
    for r in rows:
        run = client.create_run(exp_id, run_name=f"quality-{r['backbone']}-eps{r['eps']}", tags={TAG_KIND: "quality"})
        params = {"features.name": r["backbone"], "eps": r["eps"], "model_type": model, "preset": preset, "data": str(data)}
        metrics = [Metric(k, float(r[k]), 0, 0) for k in ("mean_miou", "mean_ari", "mean_nmi", *NAME_COLUMNS)
                   if isinstance(r.get(k), float) and r[k] == r[k]]
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()], metrics=metrics)
        client.set_terminated(run.info.run_id, "FINISHED" if "error" not in r else "FAILED")
        ids.append(run.info.run_id)
    return ids


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path, metavar="DATA_DIR")
    p.add_argument("--model", default="vit_h")
    p.add_argument("--preset", default="default")
    p.add_argument("--backbones", nargs="+", default=["sam", "dinov2-s", "dinov2-b", "dinov3-b"])
    p.add_argument("--eps", nargs="+", default=["auto", "0.06"], help="auto and/or fixed values")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "quality")
    p.add_argument("--mlflow", default=None, metavar="EXPERIMENT", help="also log one MLflow run per combination")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `samseg segment` flags (last)")
    args = p.parse_args(argv)
    try:
        images = labelled_images(args.data)
    except QualityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [run_combo(images, args.data, args.out, b, e, args.model, args.preset, args.out / "cache", tuple(args.extra))
            for b in args.backbones for e in args.eps]
    md = table(rows)
    (args.out / "quality.md").write_text(md + "\n")
    report = {"data": str(args.data), "model": args.model, "preset": args.preset, "rows": rows}
    if args.mlflow:
        report["mlflow_run_ids"] = log_rows(rows, args.mlflow, args.model, args.preset, args.data)
    (args.out / "quality.json").write_text(json.dumps(report, indent=1, default=str))
    print(md)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
