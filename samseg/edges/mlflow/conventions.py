"""MLflow's own conventions, honoured: the experiment from MLflow's environment, the input
image as a dataset input (lineage), the overlay in MLflow's image view.

- `default_experiment()`: `MLFLOW_EXPERIMENT_NAME`, else the experiment whose id is
  `MLFLOW_EXPERIMENT_ID`, else "samseg" — what every command uses when --experiment is not
  given.
- `log_lineage(client, run_id, summary, out_dir)`: the input image as an MLflow dataset input
  (MetaDataset: name = file name, digest = the file's sha256, source = its path or s3:// URI,
  context "input"), and overlay.png through `log_image` (key "overlay"), which MLflow's UI
  shows in the run's image grid.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
from samseg.edges.run_schema import EXPERIMENT_DEFAULT as FALLBACK_EXPERIMENT  # noqa: E402
from samseg.edges.layout import OVERLAY_PNG


def default_experiment() -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip()
    if name:
        return name
    exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID", "").strip()
    if exp_id:
        from mlflow.exceptions import MlflowException

        from samseg.edges.mlflow.client import TrackingError, client as _client, where as _where

        try:
            return _client().get_experiment(exp_id).name
        except MlflowException:
            raise TrackingError(f"MLflow at {_where()}: MLFLOW_EXPERIMENT_ID={exp_id} names no experiment") from None
    return FALLBACK_EXPERIMENT


def image_dataset_input(summary: dict[str, Any]) -> Any:
    """The run's input image as an mlflow DatasetInput (context "input"), or None."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    image = summary.get("image") or {}
    uri, sha = image.get("uri"), image.get("sha256")
    if not uri or not sha:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "can be interpreted in multiple ways": a local path is a local path
        source = resolve_dataset_source(str(uri))
    dataset = MetaDataset(source=source, name=str(image.get("file_name") or Path(str(uri)).name), digest=str(sha)[:36])
    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "input")])


def log_lineage(client: Any, run_id: str, summary: dict[str, Any], out_dir: Path) -> None:
    """Dataset input + overlay image on `run_id`; a failure here is logged, never fatal."""
    from mlflow.exceptions import MlflowException

    try:
        ds = image_dataset_input(summary)
        if ds is not None:
            client.log_inputs(run_id, datasets=[ds])
        overlay = Path(out_dir) / OVERLAY_PNG
        if overlay.is_file():
            from PIL import Image

            with Image.open(overlay) as im:
                client.log_image(run_id, im.convert("RGB"), key="overlay", step=0)
    except (MlflowException, OSError, ValueError) as exc:
        log.warning("mlflow: run %s: lineage/image not logged (%s)", run_id, exc)
