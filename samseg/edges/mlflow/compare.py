"""`samseg runs compare` and the UI's compare page: runs side by side, the parameters that differ
and every metric, as one table (compare_runs) and as the text the CLI prints (format_compare)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from samseg.edges.mlflow import client as mlflow_client
from samseg.edges.mlflow.client import TrackingError
from samseg.edges.mlflow.tracking import _get_run
from samseg.edges.run_schema import TAG_CLASS_NAMES

if TYPE_CHECKING:
    import pandas as pd


def search_runs(run_ids: list[str] | None, experiment: str | None) -> list[Any]:
    """mlflow Run objects: those of `run_ids` in the order given, else the experiment's, oldest first.
    Uses MlflowClient.search_runs (the API behind mlflow.search_runs) so no process-global tracking
    URI is touched."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client.client(reading=True)
    try:
        if run_ids:
            exp_ids = sorted({_get_run(client, rid).info.experiment_id for rid in run_ids})
            filter_string = "attributes.run_id IN ({})".format(", ".join(f"'{rid}'" for rid in run_ids))
        else:
            from samseg.edges.mlflow.conventions import default_experiment

            name = experiment or default_experiment()
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise TrackingError(f"MLflow at {mlflow_client.where()}: no experiment named {name!r}")
            exp_ids, filter_string = [exp.experiment_id], ""
        runs: list[Any] = []
        token = None
        while True:
            page = client.search_runs(exp_ids, filter_string, order_by=["attributes.start_time ASC"], max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                if run_ids:  # as the person listed them: `runs compare A B` shows A first
                    at = {rid: k for k, rid in enumerate(run_ids)}
                    runs.sort(key=lambda r: at.get(r.info.run_id, len(at)))
                return runs
    except MlflowException as exc:
        raise TrackingError(f"MLflow at {mlflow_client.where()}: search failed: {mlflow_client.error_line(exc)}") from None



def compare_runs(run_ids: list[str] | None = None, experiment: str | None = None) -> "pd.DataFrame":
    """One row per run (as `run_ids` lists them, else oldest first): run_id, run_name, the params whose values DIFFER
    across the runs (all params when there is one run), then every metric.

    run_ids=None compares every run of `experiment` (default "samseg").
    """
    import pandas as pd

    runs = search_runs(run_ids, experiment)
    if not runs:
        return pd.DataFrame(columns=["run_id", "run_name"])
    params = pd.DataFrame([r.data.params for r in runs])
    metrics = pd.DataFrame([r.data.metrics for r in runs])
    param_cols = sorted(params.columns)
    if len(runs) > 1:
        param_cols = [c for c in param_cols if params[c].astype(str).nunique(dropna=False) > 1]
    started = pd.to_datetime([r.info.start_time or 0 for r in runs], unit="ms").strftime("%Y-%m-%d %H:%M")
    out = pd.DataFrame({"run_id": [r.info.run_id for r in runs], "run_name": [r.info.run_name for r in runs],
                        "status": [r.info.status for r in runs], "started": list(started)})
    if any(TAG_CLASS_NAMES in r.data.tags for r in runs):  # what the classes are, when they are named
        out["class_names"] = [r.data.tags.get(TAG_CLASS_NAMES) for r in runs]
    for col in param_cols:
        out[col if col not in out.columns else f"params.{col}"] = params[col].to_numpy()
    for col in sorted(metrics.columns):
        out[col if col not in out.columns else f"metrics.{col}"] = metrics[col].to_numpy()
    return out.reset_index(drop=True)


COMPARE_WIDTH = 120  # what `samseg runs compare` prints fits this many columns
# The columns a wide comparison of many runs keeps, in this order, as far as they fit.
_COMPARE_FIRST = ("run_id", "status", "started", "run_name", "n_clusters", "class_names", "n_noise", "n_masks", "cluster.eps",
                  "cluster.min_samples", "features.name", "model_type")


def format_compare(df: "pd.DataFrame", width: int = COMPARE_WIDTH) -> str:
    """Plain-text table for the terminal (floats to 4 significant digits), at most `width` wide:
    the whole table when it fits; else one column per run (up to 6 runs, ids shortened to 8
    characters); else the first columns that fit, saying how many were left out (--csv has all)."""
    if df.empty:
        return "no runs"
    fmt = {"index": False, "na_rep": "-", "float_format": lambda v: f"{v:.4g}"}
    whole = df.to_string(**fmt)
    if max(len(line) for line in whole.splitlines()) <= width:
        return whole
    if len(df) <= 6:
        t = df.set_index(df["run_id"].str[:8]).drop(columns="run_id").T
        t.columns.name, t.index.name = "run", None
        text = t.to_string(na_rep="-", float_format=lambda v: f"{v:.4g}", max_colwidth=max(12, (width - 30) // len(df) - 2))
        return "\n".join(line[:width] for line in text.splitlines())
    short = df.assign(run_id=df["run_id"].str[:8], run_name=df["run_name"].astype(str).str[-24:])
    keep: list[str] = []
    for col in [c for c in _COMPARE_FIRST if c in short.columns] + [c for c in short.columns if c not in _COMPARE_FIRST]:
        trial = short[[*keep, col]].to_string(**fmt)
        if max(len(line) for line in trial.splitlines()) > width:
            break
        keep.append(col)
    left = len(df.columns) - len(keep)
    note = f"\n({left} more columns: `--csv FILE` writes every column)" if left else ""
    return short[keep].to_string(**fmt) + note
