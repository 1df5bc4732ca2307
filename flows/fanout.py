"""Fan-out of a batch in shards: one `segment` deployment run per shard, any worker takes any shard.

Per-image runs cost a process start, imports and a model load per image (about 8 s each),
and a Prefect server slows with thousands of small runs; a shard pays that once for
`ShardPlan.size` images and runs the engine's own batch loop (flows.segment.segment_shard_flow).
Only paths or s3:// URIs travel as parameters. At most `in_flight` shard runs exist at once,
so a million images never sit on the server as a million scheduled runs.

A shard run that ends without completing (its process killed: the worker reports CRASHED; a
lost machine: its heartbeats stop) is run again for the images it had not written, so
finished images are never recomputed or written twice; its images are reported with
`attempts` > 1. A shard's report is the table artifact its run left (SHARD_REPORT).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

from samseg.edges.outdirs import unique_names
from samseg.edges.run_schema import SEGMENT_DEPLOYMENT, SHARD_REPORT
from samseg.engine.progress import report
from samseg.engine.request import ShardPlan
from samseg.engine.segment import failed_entry, one_line

log = logging.getLogger(__name__)


def stale_after_s(plan: ShardPlan) -> float:
    """plan.stale_after_s, else three of Prefect's flow-run heartbeat intervals."""
    if plan.stale_after_s is not None:
        return plan.stale_after_s
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    return 3 * float(PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() or 180)


@dataclass
class _Shard:
    index: int
    uris: list[str]
    names: list[str]
    attempt: int = 1
    run: Any = None
    started: float = field(default_factory=time.monotonic)


def deployment_exists(name: str = SEGMENT_DEPLOYMENT) -> bool:
    """True when the API we talk to has the `segment` deployment (i.e. workers can take shards)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(name)
        return True
    except ObjectNotFound:
        return False


def run_shards(uris: list[str], kwargs: dict[str, Any], plan: ShardPlan = ShardPlan(),
               poll_s: float = 1.0) -> list[dict[str, Any]]:
    """Split `uris` in shards of plan.size, run each as a `segment` deployment run with
    `kwargs` (out, settings, runtime, tracking), at most plan.in_flight at once; returns the
    report entries in input order (a shard that could not finish fails its unwritten images)."""
    from prefect.client.orchestration import get_client

    from samseg.edges import shutdown

    names = unique_names(uris)
    todo = deque(_Shard(i, uris[k:k + plan.size], names[k:k + plan.size])
                 for i, k in enumerate(range(0, len(uris), plan.size)))
    running: list[_Shard] = []
    entries: dict[str, dict[str, Any]] = {}
    with get_client(sync_client=True) as client:
        while todo or running:
            shutdown.check()  # SIGTERM / Ctrl-C: no new shard (the runs created go on, on their workers)
            while todo and len(running) < plan.in_flight:
                running.append(_submit(todo.popleft(), kwargs))
            for shard in list(running):
                outcome = _poll(client, shard, plan)
                if outcome is None:
                    continue
                running.remove(shard)
                retry = _settle(client, shard, outcome, kwargs["out"], plan, entries)
                if retry is not None:
                    todo.appendleft(retry)
            if running:
                time.sleep(poll_s)
    return [entries[uri] for uri in uris]


def _submit(shard: _Shard, kwargs: dict[str, Any]) -> _Shard:
    from prefect.deployments import run_deployment

    shard.run = run_deployment(SEGMENT_DEPLOYMENT, parameters={"images": shard.uris, "names": shard.names, **kwargs},
                               timeout=0, flow_run_name=f"shard-{shard.index:05d}-try{shard.attempt}")
    shard.started = time.monotonic()
    return shard


def _poll(client: Any, shard: _Shard, plan: ShardPlan) -> Optional[Any]:
    """The shard's final flow run, or None while it runs; a run past plan.timeout_s or without
    heartbeats for stale_after_s(plan) is set CRASHED here (its machine or process is gone)."""
    from prefect.states import Crashed

    fr = client.read_flow_run(shard.run.id)
    if fr.state is not None and fr.state.is_final():
        return fr
    age = time.monotonic() - shard.started
    why = None
    if plan.timeout_s is not None and age > plan.timeout_s:
        why = f"not finished after {plan.timeout_s:g} s"
    elif fr.state is not None and fr.state.is_running() and age > stale_after_s(plan) and _silent(client, fr, stale_after_s(plan)):
        why = f"no heartbeat for {stale_after_s(plan):g} s (its worker is gone)"
    if why is None:
        return None
    client.set_flow_run_state(fr.id, Crashed(message=f"samseg batch: shard run {why}"), force=True)
    return client.read_flow_run(fr.id)


def _silent(client: Any, fr: Any, window_s: float) -> bool:
    """True when the flow run sent no heartbeat event in the last `window_s` seconds."""
    from datetime import datetime, timedelta, timezone

    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    since = datetime.now(timezone.utc) - timedelta(seconds=window_s)
    page = client.read_events(EventFilter(event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
                                          resource=EventResourceFilter(id=[f"prefect.flow-run.{fr.id}"]),
                                          occurred=EventOccurredFilter(since=since)), limit=1)
    return not page.events


def _settle(client: Any, shard: _Shard, fr: Any, out: str, plan: ShardPlan,
            entries: dict[str, dict[str, Any]]) -> Optional[_Shard]:
    """Record the shard's images from its final run; returns the shard of its unwritten images
    to run again, or None."""
    more = {"flow_run_id": str(fr.id), "shard": shard.index, "attempts": shard.attempt}
    rows = _shard_report(client, fr.id) if fr.state.is_completed() else None
    if rows is not None:
        for row in rows:
            _record(entries, {**row, **more})
        return None
    written = _written_by(out, shard.names, str(fr.id))  # what the run finished before it ended
    missing = [(u, n) for u, n in zip(shard.uris, shard.names) if n not in written]
    for uri, name in zip(shard.uris, shard.names):
        if name in written:
            _record(entries, {"image": uri, "name": name, "status": "completed", **written[name], **more})
    if not missing:
        return None
    why = one_line(f"shard run {fr.id} {fr.state.name}: {fr.state.message or 'no message'}")
    if shard.attempt <= plan.retries:
        log.warning("samseg batch: %s; running its %d unwritten images again (try %d)", why, len(missing),
                    shard.attempt + 1)
        uris, names = (list(t) for t in zip(*missing))
        return _Shard(shard.index, uris, names, shard.attempt + 1)
    for uri, name in missing:
        entries[uri] = failed_entry(uri, name, f"{uri}: {why}", **more)
    return None


def _record(entries: dict[str, dict[str, Any]], entry: dict[str, Any]) -> None:
    entries[entry["image"]] = entry
    if entry["status"] == "completed":  # the image bar moves as each shard's images finish
        report("image_done", image=entry["image"])
    else:
        report("image_failed", image=entry["image"], error=entry.get("error", ""))


def _shard_report(client: Any, flow_run_id: Any) -> Optional[list[dict[str, Any]]]:
    """The rows of the SHARD_REPORT table artifact of a completed shard run (None: none found)."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    for artifact in artifacts:
        if (artifact.description or "").startswith(SHARD_REPORT):
            data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
            return [dict(row) for row in data]
    return None


def _written_by(out: str, names: list[str], flow_run_id: str) -> dict[str, dict[str, Any]]:
    """name -> its report fields, for the image dirs of OUT that flow run `flow_run_id`
    wrote completely (a published summary.json recording that run)."""
    from samseg.edges.layout import SUMMARY_JSON
    from samseg.edges.storage import SUCCESS_MARKER, exists, is_s3_uri, join_uri, read_bytes

    done = {}
    for name in names:
        where = join_uri(out, name)
        try:
            if is_s3_uri(out) and not exists(join_uri(where, SUCCESS_MARKER)):
                continue  # an S3 image dir is published when its _SUCCESS is
            summary = json.loads(read_bytes(join_uri(where, SUMMARY_JSON)))
        except Exception:  # noqa: BLE001 — absent or half-written: not done
            continue
        if summary.get("prefect_flow_run_id") == flow_run_id:
            done[name] = {"out_dir": where, "mlflow_run_id": summary.get("mlflow_run_id"),
                          **{k: summary.get(k) for k in ("n_masks", "n_clusters", "n_noise")}}
    return done
