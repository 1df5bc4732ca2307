"""The three deployments of deployments/prefect.yaml, served from one process (`samseg serve`).

A local alternative to work pools + workers: `prefect.serve` registers the deployments
with the API (PREFECT_API_URL) and executes their flow runs in this process.
"""

from __future__ import annotations

from typing import Any, Optional


def serve_deployments(cron: Optional[str] = None, source: Optional[str] = None, out: Optional[str] = None,
                      classes_from: Optional[str] = None) -> list[Any]:
    """RunnerDeployments named as in prefect.yaml: segment-shard/segment,
    segment-batch/nightly-batch (optional cron + default source/out/classes_from), recluster/recluster.

    classes_from (an MLflow batch run id or classes.json path/URI): the nightly runs label
    new images with that run's dataset-level classes, so class ids stay the same night after night.
    """
    from flows.recluster import recluster_flow
    from flows.segment import segment_batch_flow, segment_shard_flow

    batch_params = {k: v for k, v in (("source", source), ("out", out), ("classes_from", classes_from)) if v is not None}
    return [
        segment_shard_flow.to_deployment(name="segment", tags=["samseg", "shard"]),
        segment_batch_flow.to_deployment(name="nightly-batch", tags=["samseg", "batch"], cron=cron,
                                         parameters=batch_params),
        recluster_flow.to_deployment(name="recluster", tags=["samseg", "recluster"]),
    ]


def serve_all(cron: Optional[str] = None, source: Optional[str] = None, out: Optional[str] = None,
              limit: Optional[int] = None, classes_from: Optional[str] = None) -> None:
    """Block serving the three deployments until Ctrl-C or SIGTERM (`prefect.serve`'s loop, with
    a runner that records the SIGTERM it stops on: the command then exits 143, as documented)."""
    import asyncio
    import signal

    from prefect.runner import Runner

    from samseg.edges import shutdown

    class _Runner(Runner):
        def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
            shutdown.received(signal.SIGTERM)
            super().handle_sigterm(*args, **kwargs)

    runner = _Runner(pause_on_shutdown=True, limit=limit)
    for deployment in serve_deployments(cron, source, out, classes_from):
        runner.add_deployment(deployment)
    try:
        asyncio.run(runner.start())
    except SystemExit:  # the runner's SIGTERM before it started: a stop like any other
        if not shutdown.requested():
            raise
