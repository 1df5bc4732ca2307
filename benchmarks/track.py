"""Log one benchmark result document to MLflow (`python -m benchmarks.run ... --mlflow`).

One run per benchmark invocation in the experiment given (default "samseg-benchmarks"), at
MLFLOW_TRACKING_URI (else MLflow's default store):
- params: mode, model_type, image, precision, decoder, encoder and every `config` value;
- metrics: every number in the document, dotted by its path (`B_cold.seconds.amg`,
  `ratios.A_over_B`, `A_original.agreement_B_vs_A.mean_iou_matched`, ...);
- tags: samseg.kind=benchmark, the machine description (cpu, torch, load averages);
- artifact: the JSON file itself.
Runs from different commits or machines are then compared with `samseg runs compare` or
MLflow's UI.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Iterator

EXPERIMENT_DEFAULT = "samseg-benchmarks"
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. :/]")  # MLflow metric names: "cluster+compose" → "cluster_compose"
_PARAM_KEYS = ("mode", "model_type", "precision", "kernels", "masks_per_chunk")


def flat_metrics(doc: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(dotted.path, value) for every finite int/float leaf of a nested dict/list (bools
    as 0/1); `config` and `machine` are params/tags, not metrics."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if not prefix and key in ("config", "machine"):
                continue
            yield from flat_metrics(value, f"{prefix}{key}.")
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from flat_metrics(value, f"{prefix}{i}.")
    elif isinstance(doc, (bool, int, float)) and math.isfinite(float(doc)):
        yield _UNSAFE.sub("_", prefix[:-1]), float(doc)


def log_benchmark(res: dict[str, Any], json_path: Path, experiment: str = EXPERIMENT_DEFAULT) -> str:
    """Create a FINISHED MLflow run for `res` (a benchmarks.run result) with `json_path`
    as its artifact; returns the run id."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from samseg.core.secrets import scrub_secrets
    from samseg.edges.mlflow.client import tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    run_name = f"bench-{res['mode']}-{res.get('model_type', '')}-{json_path.stem.rsplit('-', 1)[-1]}"
    run = client.create_run(exp_id, run_name=run_name, tags={"samseg.kind": "benchmark"})
    params = {k: res[k] for k in _PARAM_KEYS if k in res}
    params.update({"image": res.get("image", {}).get("name", "")})
    params.update(res.get("config", {}))
    tags = {f"machine.{k}": v for k, v in res.get("machine", {}).items()}
    metrics = list(flat_metrics(res))
    client.log_batch(
        run.info.run_id,
        params=[Param(k, scrub_secrets(str(v))[:6000]) for k, v in params.items()],
        tags=[RunTag(k, scrub_secrets(str(v))[:5000]) for k, v in tags.items()],
    )
    for start in range(0, len(metrics), 900):  # MLflow's log_batch limit is 1000 metrics
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics[start : start + 900]])
    client.log_artifact(run.info.run_id, str(json_path))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
