"""A logged run back as image dirs: the artifacts every export and push reads, downloaded per image run."""

from __future__ import annotations

from pathlib import Path

from samseg.edges.run_schema import KIND_BATCH, KIND_IMAGE, TAG_KIND, TAG_OUT_DIR

# What an image dir needs for every export format (downloaded from a run's artifacts).
RUN_FILES = ("summary.json", "masks.json", "embeddings.npy", "labels.png")


def download_image_dirs(run_id: str, workdir: Path) -> dict[Path, str]:
    """{`workdir/<name>/`: image run id} for an image run, or for each image run a batch run
    recorded, in its order. <name> is the image's output dir name (the run's samseg.out_dir),
    made safe and unique, so exports name files after images, not run ids."""
    from pathlib import PurePosixPath

    from samseg.edges.mlflow.client import TrackingError, client
    from samseg.edges.mlflow.tracking import batch_image_runs, fetch_run_inputs, get_run
    from samseg.edges.outdirs import safe_dir_name

    run = get_run(run_id)
    if run.data.tags.get(TAG_KIND, KIND_IMAGE) == KIND_BATCH:
        runs = [get_run(rid) for rid in batch_image_runs(client(), run)]  # its own record, not who tags itself its child
    else:
        runs = [run]
    if not runs:
        raise TrackingError(f"MLflow run {run_id}: no image runs to export")
    dirs: dict[Path, str] = {}
    for r in runs:
        rid = r.info.run_id
        name = safe_dir_name(PurePosixPath(r.data.tags.get(TAG_OUT_DIR) or rid).name)
        d, k = workdir / name, 1
        while d.name.casefold() in {x.name.casefold() for x in dirs}:  # one folder on a case-insensitive disk
            k += 1
            d = workdir / f"{name}-{k}"
        fetch_run_inputs(rid, d, RUN_FILES)
        dirs[d] = rid
    return dirs
