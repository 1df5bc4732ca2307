"""A logged run back as image dirs: the artifacts every export and push reads, downloaded per image run."""

from __future__ import annotations

from pathlib import Path

from samseg.edges.run_schema import KIND_BATCH, KIND_IMAGE, TAG_KIND, TAG_MLFLOW_PARENT

# What an image dir needs for every export format (downloaded from a run's artifacts).
RUN_FILES = ("summary.json", "masks.json", "embeddings.npy", "labels.png")


def download_image_dirs(run_id: str, workdir: Path) -> list[Path]:
    """`workdir/<image run id>/` for an image run, or for each image run nested under a batch run."""
    from samseg.edges.mlflow.client import TrackingError, client
    from samseg.edges.mlflow.tracking import fetch_run_inputs, get_run, search_runs

    run = get_run(run_id)
    if run.data.tags.get(TAG_KIND, KIND_IMAGE) == KIND_BATCH:
        experiment = client().get_experiment(run.info.experiment_id).name
        runs = [r for r in search_runs(None, experiment) if r.data.tags.get(TAG_MLFLOW_PARENT) == run_id
                and r.data.tags.get(TAG_KIND, KIND_IMAGE) == KIND_IMAGE]
    else:
        runs = [run]
    if not runs:
        raise TrackingError(f"MLflow run {run_id}: no image runs to export")
    dirs = []
    for r in runs:
        fetch_run_inputs(r.info.run_id, workdir / r.info.run_id, RUN_FILES)
        dirs.append(workdir / r.info.run_id)
    return dirs
