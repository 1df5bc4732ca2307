"""Fan-out of a batch's images as `segment` deployment runs: any worker takes any image.

The batch flow (flows.segment) creates one run per image and polls them; an image whose
OUT/<name> samseg may not replace fails before its run is created. The report entries are
the engine's (samseg.engine.segment).
"""

from __future__ import annotations

import time
from typing import Any

from samseg.edges.outdirs import refused_outputs, unique_names
from samseg.edges.run_schema import SEGMENT_DEPLOYMENT
from samseg.engine.progress import report
from samseg.engine.segment import failed_entry
from samseg.engine.segment import one_line as _one_line


def deployment_exists(name: str = SEGMENT_DEPLOYMENT) -> bool:
    """True when the API we talk to has the `segment` deployment (i.e. workers can take images)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(name)
        return True
    except ObjectNotFound:
        return False


def run_deployments(uris: list[str], kwargs: dict[str, Any], timeout_s: float | None,
                     poll_s: float = 1.0) -> list[dict[str, Any]]:
    """Create one `segment` run per image (any worker may take it), then wait for all;
    a run not finished after `timeout_s` (None = wait forever) is reported as failed."""
    from prefect.deployments import run_deployment

    from samseg.edges import shutdown

    names = dict(zip(uris, unique_names(uris)))
    refused = refused_outputs(kwargs["out"], uris, list(names.values())) if kwargs.get("out") else {}
    runs = {}
    for uri in uris:
        shutdown.check()
        if uri not in refused:
            runs[uri] = run_deployment(SEGMENT_DEPLOYMENT, parameters={"image": uri, "name": names[uri], **kwargs},
                                       timeout=0, flow_run_name=f"segment-{names[uri]}")
    pending, final = _wait_for(runs, timeout_s, poll_s)
    results = []
    for uri in uris:
        if uri in refused:
            results.append(failed_entry(uri, names[uri], refused[uri]))
            continue
        if uri in pending:
            results.append(failed_entry(uri, names[uri], f"{uri}: flow run {runs[uri].id} not finished after {timeout_s:g} s",
                                        flow_run_id=str(runs[uri].id)))
            continue
        fr = final[uri]
        ok = fr.state.is_completed()
        entry = {"image": uri, "name": names[uri], "status": "completed" if ok else "failed", "flow_run_id": str(fr.id)}
        if not ok:
            entry["error"] = _one_line(fr.state.message or fr.state.name)
        results.append(entry)
    return results


def _wait_for(runs: dict[str, Any], timeout_s: float | None, poll_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Poll the flow runs until all are final or `timeout_s` passed: (still pending, final)."""
    from prefect.client.orchestration import get_client

    pending, final = dict(runs), {}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while pending and (deadline is None or time.monotonic() < deadline):
            for uri, run in list(pending.items()):
                fr = client.read_flow_run(run.id)
                if fr.state is not None and fr.state.is_final():
                    final[uri] = fr
                    del pending[uri]
                    if fr.state.is_completed():  # the image bar moves as each worker finishes
                        report("image_done", image=uri)
                    else:
                        report("image_failed", image=uri, error=_one_line(fr.state.message or fr.state.name))
            if pending:
                time.sleep(poll_s)
    return pending, final
