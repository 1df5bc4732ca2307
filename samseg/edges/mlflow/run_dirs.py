"""A logged run back as image dirs: the artifacts every export and push reads, downloaded per image run."""

from __future__ import annotations

from pathlib import Path

from samseg.edges.run_schema import KIND_BATCH, KIND_IMAGE, TAG_KIND, TAG_OUT_DIR
from samseg.edges.layout import EMBEDDINGS_NPY, LABELS_PNG, MASKS_JSON, SUMMARY_JSON

# What an image dir needs for every export format (downloaded from a run's artifacts).
RUN_FILES = (SUMMARY_JSON, MASKS_JSON, EMBEDDINGS_NPY, LABELS_PNG)


def download_image_dirs(run_id: str, workdir: Path) -> dict[Path, str]:
    """{`workdir/<name>/`: image run id} for an image run, or for each image a batch run
    recorded, in its order (a sharded batch's: its image dir OUT/<name>, read from there).
    <name> is the image's output dir name, made safe and unique, so exports name files after
    images, not run ids."""
    from pathlib import PurePosixPath

    from samseg.edges.mlflow.client import TrackingError, client
    from samseg.edges.mlflow.tracking import batch_images, fetch_run_inputs, get_run
    from samseg.edges.outdirs import safe_dir_name

    run = get_run(run_id)
    if run.data.tags.get(TAG_KIND, KIND_IMAGE) == KIND_BATCH:
        images = batch_images(client(), run)  # its own record, not who tags itself its child
    else:
        images = {run_id: PurePosixPath(run.data.tags.get(TAG_OUT_DIR) or run_id).name}
    if not images:
        raise TrackingError(f"MLflow run {run_id}: no image runs to export")
    dirs: dict[Path, str] = {}
    for ref, recorded in images.items():
        name = safe_dir_name(recorded or PurePosixPath(ref).name)
        d, k = workdir / name, 1
        while d.name.casefold() in {x.name.casefold() for x in dirs}:  # one folder on a case-insensitive disk
            k += 1
            d = workdir / f"{name}-{k}"
        fetch_run_inputs(ref, d, RUN_FILES)
        dirs[d] = ref
    return dirs
