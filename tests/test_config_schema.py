"""The config schema is one declaration: a knob added to a section in samseg.core.config
reaches the config's own check, the CLI flags, the Prefect flow parameters and the UI form."""

from __future__ import annotations

import argparse
import dataclasses
from typing import ClassVar

import pytest
from pydantic import ValidationError

from samseg.core.config import SECTION_CLASSES, ClusterConfig, knob


@dataclasses.dataclass(frozen=True)
class ClusterWithANewKnob(ClusterConfig):
    """The cluster section with one more field, declared the one way a field is declared."""

    SECTION: ClassVar[str] = "cluster"
    smoothing: float = knob(0.25, "a new knob: how much to smooth", gt=0, le=1)


def test_new_knob_is_checked_by_the_config_itself() -> None:
    assert ClusterWithANewKnob().smoothing == 0.25
    with pytest.raises(ValueError, match=r"^cluster.smoothing must be in \(0, 1\]$"):
        ClusterWithANewKnob(smoothing=0)


def test_new_knob_reaches_the_cli() -> None:
    from samseg.apps.cli.config import add_section_flags

    p = argparse.ArgumentParser()
    add_section_flags(p, ClusterWithANewKnob, ClusterWithANewKnob())
    assert vars(p.parse_args(["--smoothing", "0.5"]))["cluster.smoothing"] == 0.5
    assert "a new knob" in p.format_help()


def test_new_knob_reaches_the_flow_parameters() -> None:
    from flows.params import params_model

    model = params_model(ClusterWithANewKnob, "ClusterWithANewKnobParams")
    prop = model.model_json_schema()["properties"]["smoothing"]
    assert prop["exclusiveMinimum"] == 0 and prop["maximum"] == 1 and prop["description"].startswith("a new knob")
    assert model(smoothing=0.5).to_config() == ClusterWithANewKnob(smoothing=0.5)
    with pytest.raises(ValidationError):
        model(smoothing=2)


def test_new_knob_reaches_the_ui_form() -> None:
    from samseg.apps.ui.validation import _validate_section, form_fields

    fields = form_fields(ClusterWithANewKnob)
    assert fields["smoothing"] is float and "eps_auto" not in fields  # switches are not form fields
    errors: dict[str, str] = {}
    values = _validate_section({"smoothing": "7", "eps": "0.1"}, fields, ClusterWithANewKnob(), "cluster", errors)
    assert errors == {"smoothing": "smoothing must be in (0, 1]"} and values == {"cluster.eps": 0.1}  # in the field's words


def test_every_section_of_the_pipeline_is_generated() -> None:
    from flows.params import SECTION_PARAMS, PipelineParams

    assert list(SECTION_CLASSES) == ["amg", "pool", "cluster", "tile", "features", "names"]
    assert set(SECTION_PARAMS) == set(SECTION_CLASSES) <= set(PipelineParams.model_fields)
    for name, cls in SECTION_CLASSES.items():
        assert set(SECTION_PARAMS[name].model_fields) == {f.name for f in dataclasses.fields(cls)}


def test_a_cosine_radius_past_2_is_refused_but_a_run_recorded_with_one_still_reads():
    """Cosine distances are at most 2: a new eps above it is refused (it names the knob), while a
    run an older samseg recorded with one reads back as 2, the same clustering."""
    import dataclasses

    from samseg.core.config import DEFAULT, PipelineConfig

    with pytest.raises(ValueError, match="cluster.eps must be <= 2 with the cosine metric"):
        dataclasses.replace(DEFAULT.cluster, eps=5.0)
    assert dataclasses.replace(DEFAULT.cluster, eps=5.0, metric="euclidean").eps == 5.0  # no such bound
    assert dataclasses.replace(DEFAULT.cluster, distance_threshold=3.0).distance_threshold == 3.0  # dbscan: not its knob
    recorded = {**DEFAULT.flat(), "cluster.eps": 5.0}
    assert PipelineConfig.from_flat(recorded).cluster.eps == 2.0
