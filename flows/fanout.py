"""Fan-out of a batch in shards: one `segment` deployment run per shard, any worker takes any shard.

Per-image runs cost a process start, imports and a model load per image (about 8 s each),
and a Prefect server slows with thousands of small runs; a shard pays that once for
`ShardPlan.size` images and runs the engine's own batch loop (flows.segment.segment_shard_flow).
Only paths or s3:// URIs travel as parameters. At most `in_flight` shard runs exist at once,
so a million images never sit on the server as a million scheduled runs.

A shard run that crashes (its process killed: the worker reports CRASHED; a lost machine: it
sent heartbeats, then none for `stale_after_s`) or fails is run again for the images it had
not written, so finished images are never recomputed or written twice; its images are
reported with `attempts` > 1. A run past `timeout_s` is cancelled (its worker stops it) and its
unwritten images fail; a run cancelled by a person is not run again. A shard's report is the
table artifact its run left (SHARD_REPORT).

The parent holds no list of the batch: its inputs come as a Listing (listed once into a local
file, an S3 prefix page by page), each shard is made when a slot frees, names are made unique on disk and each shard's entries
are spilled to a local file as it settles (samseg.edges.spill), so its memory does not grow with
the batch (benchmarks/listing.py).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

from samseg.edges.outdirs import named_inputs
from samseg.edges.run_schema import SEGMENT_DEPLOYMENT, SHARD_REPORT
from samseg.edges.spill import SpilledEntries
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
    running_since: Optional[float] = None  # when this process first saw the run RUNNING (monotonic)
    cancel_sent: Optional[float] = None  # when the batch asked a timed-out run to stop
    why: Optional[str] = None  # why the batch stopped the run (timeout, silence)
    heartbeat_checked: float = 0.0


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


def run_shards(uris: Iterable[str], kwargs: dict[str, Any], plan: ShardPlan = ShardPlan(),
               poll_s: float = 0.25, names: Optional[Iterable[str]] = None) -> SpilledEntries:
    """Split `uris` in shards of plan.size, run each as a `segment` deployment run with
    `kwargs` (out, settings, runtime, tracking), at most plan.in_flight at once; returns the
    report entries in input order (a shard that could not finish fails its unwritten images).
    names: the images' output dir names (default: their unique names; a part of a batch gets the batch's).
    `uris` is read as shards are submitted (a Listing: page by page) and the entries wait on
    disk, so the parent's memory does not grow with the batch."""
    from prefect.client.orchestration import get_client

    from samseg.edges import shutdown

    pending = _shards(zip(uris, names) if names is not None else named_inputs(uris), plan.size)
    todo: deque[_Shard] = deque()  # shards run again (retries), before any new one
    running: list[_Shard] = []
    entries = SpilledEntries()
    listing_error: Optional[Exception] = None

    def next_shard() -> Optional[_Shard]:
        """A retry, else the next shard of the listing; None when there is none (or the listing failed)."""
        nonlocal listing_error
        if todo:
            return todo.popleft()
        if listing_error is not None:
            return None
        try:
            return next(pending, None)
        except Exception as exc:  # noqa: BLE001 — S3 gone mid-listing: the running shards' work is kept, then it is raised
            listing_error = exc
            log.warning("samseg batch: the listing failed (%s); no new shard, waiting for the %d running",
                        one_line(exc), len(running))
            return None
    with get_client(sync_client=True) as client:
        if kwargs.get("track"):  # an earlier batch that died left these RUNNING
            end_dead_shard_runs(client, kwargs["experiment"])
        try:
            while True:
                shutdown.check()  # SIGTERM / Ctrl-C: no new shard, and the runs created are cancelled (below)
                while len(running) < plan.in_flight and (shard := next_shard()):
                    entries.begin(shard.index, shard.uris)
                    running.append(_submit(shard, kwargs))
                if not running:
                    break
                runs = _read_runs(client, running)  # one request a poll, however many shards run
                for shard in list(running):
                    outcome = _poll(client, shard, plan, runs.get(shard.run.id))
                    if outcome is None:
                        continue
                    running.remove(shard)
                    retry = _settle(client, shard, outcome, kwargs, plan, entries)
                    if retry is not None:
                        todo.appendleft(retry)
                if running:
                    time.sleep(poll_s)
        except BaseException:  # a stop or a server gone: the created runs must not go on writing unseen
            for shard in running:
                _cancel(client, shard)
                _end_mlflow_run(kwargs, str(shard.run.id))  # its process may die before it can
            raise
    if listing_error is not None:  # the batch fails as its listing did; the same command again runs what is missing
        raise listing_error
    return entries


def _shards(named: Iterable[tuple[str, str]], size: int) -> Iterator[_Shard]:
    """The shards of `named` in input order, each made when it is asked for."""
    pairs = iter(named)
    for index in itertools.count():
        chunk = list(itertools.islice(pairs, size))
        if not chunk:
            return
        uris, names = (list(t) for t in zip(*chunk))
        yield _Shard(index, uris, names)


def end_dead_shard_runs(client: Any, experiment: str) -> list[str]:
    """End (KILLED) the shard runs an earlier batch left RUNNING in MLflow whose Prefect flow run is
    over, or gone from the Prefect API it ran on (this one): their batch died before it could end
    them, and so did they. A shard run whose flow run is still going, or that ran on another Prefect
    API (its id means nothing here), is left alone. Best effort; returns the ids ended."""
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    from samseg.edges.mlflow.shard_runs import end_runs, running_shard_runs

    here = PREFECT_API_URL.value()
    try:
        dead = []
        for run_id, (flow_run_id, api) in running_shard_runs(experiment).items():
            try:
                fr = client.read_flow_run(flow_run_id)
            except ObjectNotFound:
                if api is not None and api == here:
                    dead.append(run_id)
                continue
            if fr.state is not None and fr.state.is_final():
                dead.append(run_id)
        end_runs(dead)
    except Exception as exc:  # noqa: BLE001 — MLflow or the API not answering: the next batch looks again
        log.debug("samseg batch: cannot sweep shard runs: %s", exc)
        return []
    return dead


def _submit(shard: _Shard, kwargs: dict[str, Any]) -> _Shard:
    from prefect.deployments import run_deployment

    shard.run = run_deployment(SEGMENT_DEPLOYMENT, parameters={"images": shard.uris, "names": shard.names, **kwargs},
                               timeout=0, flow_run_name=f"shard-{shard.index:05d}-try{shard.attempt}")
    return shard


def _cancel(client: Any, shard: _Shard) -> None:
    """Ask the shard's run to stop (CANCELLING: its worker kills the process); best effort."""
    from prefect.states import Cancelling

    try:
        client.set_flow_run_state(shard.run.id, Cancelling(message=f"samseg batch: {shard.why or 'stopped'}"))
    except Exception as exc:  # noqa: BLE001 — a run already final, a server gone: nothing more to do here
        log.debug("cannot cancel shard run %s: %s", shard.run.id, exc)


READ_PAGE = 200  # flow runs per read: a Prefect server answers at most PREFECT_SERVER_API_DEFAULT_LIMIT (200) at once


def _read_runs(client: Any, shards: list[_Shard]) -> dict[Any, Any]:
    """flow run id -> flow run, for the shards' runs: one request per READ_PAGE of them, whatever
    plan.in_flight is. A run the answer lacks (deleted from the server) is read alone, so its
    error is said; a run not read this time is absent (a blip of the API: asked again next poll)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    ids = [shard.run.id for shard in shards]
    runs: dict[Any, Any] = {}
    try:
        for k in range(0, len(ids), READ_PAGE):
            page = ids[k:k + READ_PAGE]
            runs.update((fr.id, fr) for fr in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=page)), limit=len(page)))
    except Exception as exc:  # noqa: BLE001 — a blip of the API: ask again at the next poll
        log.warning("samseg batch: cannot read the shard runs (%s); asking again", one_line(exc))
        return runs
    for rid in (rid for rid in ids if rid not in runs):
        try:
            runs[rid] = client.read_flow_run(rid)
        except Exception as exc:  # noqa: BLE001 — gone or a blip: said, and asked again at the next poll
            log.warning("samseg batch: cannot read shard run %s (%s); asking again", rid, one_line(exc))
    return runs


def _poll(client: Any, shard: _Shard, plan: ShardPlan, fr: Optional[Any]) -> Optional[Any]:
    """The shard's final flow run, or None while it runs (or while `fr`, its run as just read, is
    None: not read this time). A run RUNNING longer than plan.timeout_s is asked to stop
    (CANCELLING); one whose heartbeats stopped (its machine is gone) is set CRASHED; a stop
    nobody acknowledges within a heartbeat window is set CRASHED."""
    if fr is None:
        return None
    if fr.state is not None and fr.state.is_final():
        return fr
    now = time.monotonic()
    if fr.state is not None and fr.state.is_running() and shard.running_since is None:
        shard.running_since = now  # the timeout counts from here: a queue wait is not the run's time
    window = stale_after_s(plan)
    if shard.cancel_sent is not None:
        if now - shard.cancel_sent > window:  # no worker took the stop: the machine is gone
            return _crash(client, fr, shard.why)
        return None
    if shard.running_since is None:
        return None
    if plan.timeout_s is not None and now - shard.running_since > plan.timeout_s:
        shard.why, shard.cancel_sent = f"not finished after {plan.timeout_s:g} s", now
        _cancel(client, shard)
        return None
    if now - shard.running_since > window and now - shard.heartbeat_checked > window / 3:
        shard.heartbeat_checked = now
        if _heartbeats_stopped(client, fr, window):
            shard.why = f"sent no heartbeat for {window:g} s (its worker is gone)"
            return _crash(client, fr, shard.why)
    return None


def _crash(client: Any, fr: Any, why: Optional[str]) -> Optional[Any]:
    """Set a run whose machine is gone CRASHED; its final run, or None to look again next poll."""
    from prefect.states import Crashed

    try:
        client.set_flow_run_state(fr.id, Crashed(message=f"samseg batch: shard run {why}"), force=True)
        done = client.read_flow_run(fr.id)
    except Exception as exc:  # noqa: BLE001 — a blip of the API
        log.warning("samseg batch: cannot mark shard run %s crashed (%s)", fr.id, one_line(exc))
        return None
    return done if done.state is not None and done.state.is_final() else None


def _heartbeats_stopped(client: Any, fr: Any, window_s: float) -> bool:
    """True when the run sent heartbeats and the newest is older than `window_s`. A run that
    never sent one (heartbeats off on its worker, events not reaching the server) is not judged."""
    from datetime import datetime, timedelta, timezone

    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    since = fr.start_time or (datetime.now(timezone.utc) - timedelta(days=1))
    try:
        page = client.read_events(EventFilter(event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
                                              resource=EventResourceFilter(id=[f"prefect.flow-run.{fr.id}"]),
                                              occurred=EventOccurredFilter(since=since)), limit=1)  # newest first
    except Exception:  # noqa: BLE001 — cannot tell: not stopped
        return False
    if not page.events:
        return False
    return (datetime.now(timezone.utc) - page.events[0].occurred).total_seconds() > window_s


def _settle(client: Any, shard: _Shard, fr: Any, kwargs: dict[str, Any], plan: ShardPlan,
            entries: SpilledEntries) -> Optional[_Shard]:
    """Record the shard's images from its final run; returns the shard of its unwritten images
    to run again (the run crashed or failed, retries left), or None."""
    more = {"flow_run_id": str(fr.id), "shard": shard.index, "attempts": shard.attempt}
    rows = _shard_report(client, fr.id) if fr.state.is_completed() else None
    if rows is not None:  # the rows of this shard's images, one each (a foreign report may hold others)
        mine = set(shard.uris)
        rows = list({row.get("image"): row for row in rows if row.get("image") in mine}.values())
        _record(entries, shard, [{**row, **more} for row in rows])
        reported = {row["image"] for row in rows}
        lost = [failed_entry(u, n, f"{u}: not in its shard run's report ({fr.id})", **more)
                for u, n in zip(shard.uris, shard.names) if u not in reported]
        if lost:  # a report that lacks an image (another samseg's worker): failed, never dropped from the batch's
            entries.add(shard.index, lost)
        return None
    _end_mlflow_run(kwargs, str(fr.id))  # a run killed before it could end its MLflow run
    written = _written_by(kwargs, shard.names, str(fr.id))  # what the run finished before it ended
    missing = [(u, n) for u, n in zip(shard.uris, shard.names) if n not in written]
    settled = [{**written[name], "image": uri, **more} for uri, name in zip(shard.uris, shard.names) if name in written]
    why = one_line(f"shard run {fr.id} {fr.state.name}: {shard.why or fr.state.message or 'no message'}")
    state = str(getattr(fr.state.type, "value", fr.state.type)).upper()
    retry = None
    if missing and state in ("CRASHED", "FAILED") and shard.attempt <= plan.retries:  # not a timeout, not a person's cancel
        log.warning("samseg batch: %s; running its %d unwritten images again (try %d)", why, len(missing),
                    shard.attempt + 1)
        uris, names = (list(t) for t in zip(*missing))
        retry = _Shard(shard.index, uris, names, shard.attempt + 1)
    _record(entries, shard, settled)
    if missing and retry is None:  # (failed_entry says each failure itself)
        entries.add(shard.index, [failed_entry(uri, name, f"{uri}: {why}", **more) for uri, name in missing])
    return retry


def _end_mlflow_run(kwargs: dict[str, Any], flow_run_id: str) -> None:
    """End (KILLED) the shard's MLflow run that flow run `flow_run_id` left RUNNING, if any (bounded: a stop must not wait)."""
    if kwargs.get("track") and kwargs.get("batch_run_id"):
        from samseg.edges.mlflow.shard_runs import end_runs_of_flow_run
        from samseg.edges.shutdown import bounded

        bounded(lambda: end_runs_of_flow_run(kwargs["batch_run_id"], flow_run_id))


def _record(entries: SpilledEntries, shard: _Shard, settled: list[dict[str, Any]]) -> None:
    entries.add(shard.index, settled)
    for entry in settled:  # the image bar moves as each shard's images finish
        if entry["status"] == "completed":
            report("image_done", image=entry["image"], entry=entry)
        else:
            report("image_failed", image=entry["image"], error=entry.get("error", ""), entry=entry)


def _shard_report(client: Any, flow_run_id: Any) -> Optional[list[dict[str, Any]]]:
    """The rows of the SHARD_REPORT table artifact of a completed shard run (None: none found)."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    for artifact in artifacts:
        if (artifact.description or "").startswith(SHARD_REPORT):
            data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
            return [dict(row) for row in data]
    return None


def _written_by(kwargs: dict[str, Any], names: list[str], flow_run_id: str) -> dict[str, dict[str, Any]]:
    """name -> its report fields, for the image dirs of OUT that flow run `flow_run_id` wrote
    completely (a published summary.json recording that run). Its shard's MLflow run ended
    before it logged its table: the batch's record is the image's (samseg.edges.mlflow.shard_runs)."""
    from samseg.edges.layout import SUMMARY_JSON
    from samseg.edges.storage import SUCCESS_MARKER, exists, is_s3_uri, join_uri, read_bytes

    out = kwargs["out"]
    done = {}
    for name in names:
        where = join_uri(out, name)
        try:
            if is_s3_uri(out) and not exists(join_uri(where, SUCCESS_MARKER)):
                continue  # an S3 image dir is published when its _SUCCESS is
            summary = json.loads(read_bytes(join_uri(where, SUMMARY_JSON)))
        except Exception:  # noqa: BLE001 — absent or half-written: not done
            continue
        if summary.get("prefect_flow_run_id") != flow_run_id:
            continue
        from samseg.engine.segment import image_entry

        done[name] = image_entry(name, name, {**summary, "out_dir": where})  # its input: the caller's
    return done
