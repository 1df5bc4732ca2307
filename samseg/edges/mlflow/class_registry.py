"""Dataset classes in the MLflow model registry: versioned, aliased, loadable anywhere.

`register_classes(batch_run_id, name)` turns the classes.json of a dataset-level batch run
(prototypes, radii, the clustering config) plus what made the embeddings (checkpoint
sha256, model type, embedding dimension) into an MLflow pyfunc model, logged under the
batch run (`classes_model/`) and registered as a new version of `name`. Then

    model = mlflow.pyfunc.load_model("models:/NAME/1")        # or "models:/NAME@production"
    model.predict(embeddings_nc)                                # (N,) int64 class ids, -1 = none

and `--classes-from models:/NAME@production` labels new batches with those classes (the
CLI, the nightly deployment's `classes_from`). Embeddings of another dimension, or classes
applied to images embedded by another checkpoint, are refused with one clear line.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import warnings

# MLflow warns at its import and at each PythonModel's definition that predict has no type hints:
# advice to model authors, not the user's business (ours has none on purpose: MLflow reads them as a
# schema). MLflow sets its own filter ("once") around that warning, so it is dropped where it is
# shown; every other warning, and every filter a module adds on import, stays as it is.
_shown = warnings.showwarning


def _without_type_hint_advice(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
    if "Add type hints to the `predict` method" not in str(message):
        _shown(message, category, *args, **kwargs)


warnings.showwarning = _without_type_hint_advice
try:
    import mlflow.pyfunc

    class ClassesModel(mlflow.pyfunc.PythonModel):
        """pyfunc wrapper of a samseg ClassTable: predict(N×C embeddings) → (N,) class ids."""

        def load_context(self, context: Any) -> None:
            from samseg.core.dataset import ClassTable

            path = context.artifacts[_CLASSES_KEY]
            self.table = ClassTable.from_json(Path(path).read_text(encoding="utf-8"), source=str(path))

        def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as a schema
            import numpy as np

            from samseg.core.dataset import ClassTableError, assign_to_classes

            x = np.asarray(getattr(model_input, "values", model_input), dtype=np.float32)
            if x.ndim != 2 or (x.shape[0] and x.shape[1] != self.table.embedding_dim):
                raise ClassTableError(f"embeddings must be N×{self.table.embedding_dim} (the classes' dimension), "
                                      f"got shape {tuple(x.shape)}")
            return assign_to_classes(x, self.table).labels
finally:
    warnings.showwarning = _shown


MODEL_ARTIFACT = "classes_model"
_CLASSES_KEY = "classes_json"


def register_classes(batch_run_id: str, name: str, classes_json: str | Path) -> dict[str, Any]:
    """Log `classes_json` as a pyfunc model under the batch run and register it as a new
    version of `name`; returns {"name", "version", "model_uri"}."""
    from mlflow.exceptions import MlflowException

    from samseg.core.dataset import ClassTable
    from samseg.edges.mlflow.client import TrackingError, client as _client, error_line as _one_line, where as _where

    table = ClassTable.from_json(Path(classes_json).read_text(encoding="utf-8"), source=str(classes_json))
    metadata = {"samseg_classes": "1", "n_classes": table.n_classes, "embedding_dim": table.embedding_dim,
                "checkpoint_sha256": table.sample.get("checkpoint_sha256"), "model_type": table.sample.get("model_type"),
                "features": table.sample.get("features"), "features_sha256": table.sample.get("features_sha256"),
                "cluster": json.dumps(table.cluster, sort_keys=True), "batch_run_id": batch_run_id}
    client = _client()
    try:
        with tempfile.TemporaryDirectory(prefix="samseg-classes-model-") as tmp:
            path = Path(tmp) / MODEL_ARTIFACT
            with _quiet_pyfunc():  # its advice to model authors (type hints, code paths) is not the user's business
                mlflow.pyfunc.save_model(str(path), python_model=ClassesModel(), artifacts={_CLASSES_KEY: str(classes_json)},
                                         metadata=metadata, pip_requirements=["samseg"])
            client.log_artifacts(batch_run_id, str(path), artifact_path=MODEL_ARTIFACT)
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(getattr(exc, "error_code", "")) and "already exists" not in str(exc):
                raise
        source = f"{client.get_run(batch_run_id).info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT}"
        version = client.create_model_version(name, source=source, run_id=batch_run_id)
    except MlflowException as exc:
        raise TrackingError(f"MLflow at {_where()}: cannot register classes as {name!r}: {_one_line(exc)}") from None
    return {"name": name, "version": int(version.version), "model_uri": f"models:/{name}/{version.version}"}


def _version_source(model_uri: str) -> str:
    """`models:/NAME/VERSION` or `models:/NAME@ALIAS` → the version's artifact location."""
    from samseg.edges.mlflow.client import client as _client

    ref = model_uri[len("models:/"):]
    name, sep, alias = ref.partition("@")
    client = _client(reading=True)
    if sep:
        version = client.get_model_version_by_alias(name, alias)
    else:
        name, _, number = ref.rpartition("/")
        if not name or not (number.isascii() and number.isdigit()):
            raise ValueError(f"{model_uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
        version = client.get_model_version(name, number)
    return client.get_model_version_download_uri(version.name, version.version)


@contextmanager
def _quiet_pyfunc() -> Iterator[None]:
    """mlflow.pyfunc's warnings and log lines about how a python_model is written, silenced."""
    import logging
    import warnings

    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


def pinned_version_uri(model_uri: str) -> str:
    """`models:/NAME@ALIAS` as the version the alias names now (`models:/NAME/3`); TrackingError in one line."""
    from mlflow.exceptions import MlflowException

    from samseg.edges.mlflow.client import TrackingError, client as _client, error_line as _one_line

    name, _, alias = model_uri[len("models:/"):].partition("@")
    try:
        version = _client(reading=True).get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise TrackingError(f"{model_uri}: cannot resolve the alias ({_one_line(exc)})") from None
    return f"models:/{version.name}/{version.version}"


def load_registered_classes(model_uri: str) -> Any:
    """The ClassTable of a registered classes model (`models:/NAME/V` or `models:/NAME@alias`),
    with `sample["assigned_from"]` = the URI and the metadata's checkpoint/model type."""
    import dataclasses

    from mlflow.exceptions import MlflowException

    from samseg.edges.mlflow.client import TrackingError, error_line as _one_line, tracking_uri

    try:
        with tempfile.TemporaryDirectory(prefix="samseg-classes-") as tmp:
            # Resolved through samseg's own tracking URI, never the fluent API's process-wide one.
            local = mlflow.artifacts.download_artifacts(artifact_uri=_version_source(model_uri), dst_path=tmp,
                                                        tracking_uri=tracking_uri())
            model = mlflow.pyfunc.load_model(local)
            python_model = model.unwrap_python_model()
            meta = dict(model.metadata.metadata or {})
    except (MlflowException, OSError, ValueError) as exc:
        raise TrackingError(f"{model_uri}: cannot load the registered classes ({_one_line(exc)})") from None
    if not isinstance(python_model, ClassesModel):
        raise TrackingError(f"{model_uri}: not a samseg classes model")
    table = python_model.table
    sample = {**table.sample, "run_id": model_uri,
              **{k: meta.get(k) for k in ("checkpoint_sha256", "model_type", "features", "features_sha256")}}
    return dataclasses.replace(table, sample=sample)
