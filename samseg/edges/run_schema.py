"""The run schema every layer shares: run kinds, samseg's MLflow tag names, stage-cache
statuses, the default experiment and the Prefect flow/deployment names. Strings that were
once matched across six modules live here once. No imports: the CLI reads it at startup.
"""

from __future__ import annotations

EXPERIMENT_DEFAULT = "samseg"
EXPERIMENT_NAME_MAX = 256  # characters: MLflow's experiments.name column is String(256)

# samseg.kind of an MLflow run
KIND_IMAGE, KIND_BATCH, KIND_RECLUSTER = "image", "batch", "recluster"
KINDS: tuple[str, ...] = (KIND_IMAGE, KIND_BATCH, KIND_RECLUSTER)
KIND_SHARD = "shard"  # one run for the images of a batch's shard (samseg.edges.mlflow.shard_runs)

# samseg's MLflow tags: every "samseg.<tag>" name is here and nowhere else (tests/test_run_schema.py)
TAG_KIND = "samseg.kind"  # one of KINDS, or KIND_SHARD
TAG_OUT_DIR = "samseg.out_dir"
TAG_SOURCE = "samseg.source"
TAG_EXEMPLAR = "samseg.exemplar"
TAG_PARENT_RUN = "samseg.parent_run_id"  # the run a recluster started from
TAG_IMAGE_SHA256 = "samseg.image_sha256"
TAG_IMAGE_URI = "samseg.image_uri"
TAG_CHECKPOINT_SHA256 = "samseg.checkpoint_sha256"
TAG_FEATURES_SHA256 = "samseg.features_sha256"  # the weights the embeddings were pooled from (SAM's for `sam`)
TAG_PREFECT_FLOW_RUN = "samseg.prefect_flow_run_id"
TAG_PREFECT_API = "samseg.prefect_api"  # the Prefect API a shard run's flow run lives on (its id means nothing elsewhere)
TAG_VERSION = "samseg.version"
TAG_CACHE_PREFIX = "samseg.cache."  # + stage name: one of CACHE_STATUSES
TAG_CLASSES = "samseg.classes"  # a batch run's dataset classes: "dataset" (clustered) or "assigned" (another run's)
# A batch run's TAG_CLASSES, and an image's summary.json "classes", when its ids are dataset-level ones.
DATASET_MODES: tuple[str, ...] = ("dataset", "assigned")
TAG_CLASS_NAMES = "samseg.class_names"  # a named run's "<id>:<name>" list, what `samseg runs compare` shows
TAG_CLASSES_FROM = "samseg.classes_from"  # the run id / classes.json the assigned classes came from
TAG_HOST, TAG_PID, TAG_BATCH_KEY = "samseg.host", "samseg.pid", "samseg.batch_key"  # who runs a batch (resume/sweep)
# MLflow's own tag that nests a run under its parent (an image run under its batch run)
TAG_MLFLOW_PARENT = "mlflow.parentRunId"
# The tags an image run takes from its summary.json: tag -> the path of keys to its value there
# (samseg.edges.mlflow.tracking.run_tags). A new tag read off the summary is one line here.
SUMMARY_TAGS: dict[str, tuple[str, ...]] = {
    TAG_IMAGE_SHA256: ("image", "sha256"),
    TAG_IMAGE_URI: ("image", "uri"),
    TAG_CHECKPOINT_SHA256: ("model", "checkpoint_sha256"),
    TAG_FEATURES_SHA256: ("features", "sha256"),
    TAG_PREFECT_FLOW_RUN: ("prefect_flow_run_id",),
    TAG_VERSION: ("samseg_version",),
}

# Where a stage's value came from in one run (summary.json "cache", tags samseg.cache.<stage>).
HIT, COMPUTED, SKIPPED = "hit", "computed", "skipped"  # skipped: not needed (later stages were cached)
FROM_PARENT_RUN, FROM_RUN_ARTIFACTS = "parent_run", "run"  # a recluster's inputs
CACHE_STATUSES: tuple[str, ...] = (HIT, COMPUTED, SKIPPED, FROM_PARENT_RUN, FROM_RUN_ARTIFACTS)

# Prefect flow names and "<flow name>/<deployment name>" as in deployments/prefect.yaml.
IMAGE_FLOW, SHARD_FLOW, BATCH_FLOW, RECLUSTER_FLOW = "segment-image", "segment-shard", "segment-batch", "recluster"
SEGMENT_DEPLOYMENT = f"{SHARD_FLOW}/segment"  # a batch's shards run as this deployment's runs (flows.fanout)
SHARD_REPORT = "samseg shard report"  # the table artifact a shard run leaves: one row per image
SHARDED = "deployment"  # a batch report's "fan_out" when its images ran in shards: one MLflow run per shard
RECLUSTER_DEPLOYMENT = f"{RECLUSTER_FLOW}/recluster"


def eps_used(summary: dict) -> object:
    """The DBSCAN eps an image was clustered with, from its summary.json: --eps auto's choice
    (or its fallback), else the configured one; None when neither is recorded."""
    chosen = (summary.get("eps_auto") or {}).get("eps")
    return chosen if chosen is not None else (summary.get("config") or {}).get("cluster.eps")


# A batch run's param beside its config's: the --max-cluster its dataset classes were fitted under
# (absent: the algorithm's default), which a recluster of the batch fits them under again.
PARAM_MAX_CLUSTER = "max_cluster"


RECLUSTER_OF = "recluster of batch run "  # a batch recluster's source tag: this, then the batch's id


def derived_how(tags: dict[str, str]) -> str | None:
    """How a batch run made from another (tag samseg.parent_run_id) was made: "recluster" (new
    settings, samseg.engine.recluster) or "edit" (a person's class edits, samseg.engine.curate_dataset);
    None for a batch made from images."""
    if not tags.get(TAG_PARENT_RUN):
        return None
    return "recluster" if str(tags.get(TAG_SOURCE) or "").startswith(RECLUSTER_OF) else "edit"
