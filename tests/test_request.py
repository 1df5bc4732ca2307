"""One run request: the CLI's flags, the flow parameters, a deployment run with no parameters
and samseg.segment's keywords build the same config and runtime (samseg.engine.request,
samseg.core.config.configure), and a runtime option reaches the Prefect path."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samseg.core.backbones import SAM, TINY_RANDOM
from samseg.core.config import DEFAULT, configure
from samseg.engine.request import Runtime


def _cli_config(*flags: str):
    from samseg.apps.cli import build_parser
    from samseg.apps.cli.config import config_from_args

    return config_from_args(build_parser().parse_args(["segment", "x.jpg", "--out", "o", *flags]))


def test_a_deployment_run_without_parameters_segments_like_the_cli_default() -> None:
    from flows.params import PipelineParams

    assert PipelineParams().to_config() == _cli_config() == configure() == DEFAULT
    assert DEFAULT.features.name != SAM and DEFAULT.cluster.eps_auto  # the fault: the flows had SAM's features, eps 0.06


@pytest.mark.parametrize("flags, keywords", [
    (("--points-per-side", "8", "--eps", "0.1", "--features", "sam"), dict(points_per_side=8, eps=0.1, features="sam")),
    (("--model", "tiny-random", "--min-samples", "3"), dict(model=TINY_RANDOM, min_samples=3)),
    (("--preset", "notebook", "--eps", "auto", "--tile", "auto"), dict(preset="notebook", eps="auto", tile="auto")),
    (("--features", "dinov3-b", "--features-size", "256", "--tile", "512"), dict(features="dinov3-b", features_size=256, tile=512)),
])
def test_the_same_request_from_flags_keywords_and_flow_parameters(flags: tuple, keywords: dict) -> None:
    from flows.params import PipelineParams

    cfg = _cli_config(*flags)
    assert configure(**keywords) == cfg
    assert PipelineParams.from_config(cfg).to_config() == cfg


@pytest.mark.parametrize("bad, message", [
    (dict(epss=0.1), "unknown setting 'epss'; did you mean eps"),
    (dict(points_per_side="8"), "amg.points_per_side must be int"),
    (dict(eps=-1.0), "cluster.eps"),
    (dict(features="dinov9"), "unknown feature backbone .dinov9."),
    (dict(tile_overlap=10), "need tiling on"),
])
def test_a_wrong_knob_is_one_value_error_naming_it(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        configure(**bad)


def test_every_runtime_option_is_a_flow_parameter_and_a_cli_flag() -> None:
    from flows.params import RuntimeParams
    from samseg.apps.cli import build_parser

    names = [f.name for f in dataclasses.fields(Runtime)]
    assert list(RuntimeParams.model_fields) == names
    args = build_parser().parse_args(["segment", "x.jpg", "--out", "o"])
    assert set(names) <= set(vars(args))  # the CLI's dests are the field names: Runtime.of(vars(args))
    given = Runtime(checkpoint="c.pth", features_checkpoint="f.safetensors", device="cpu", kernels="sam", seed=3,
                    cache="/tmp/c", save_features=True)
    assert RuntimeParams(**dataclasses.asdict(given)).to_config() == given


def test_features_checkpoint_reaches_the_prefect_path_and_its_sha256_is_recorded(prefect_api, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    from cli_run import run_cli
    from safetensors.torch import save_file

    from samseg.sam.backbones import build_backbone
    from samseg.sam.files import file_sha256

    monkeypatch.setenv("SAMSEG_HOME", str(tmp_path / "home"))
    weights = tmp_path / "tiny7.safetensors"  # seed 7: not the weights a run without the file would build
    save_file({k: v.contiguous() for k, v in build_backbone(TINY_RANDOM, seed=7).state_dict().items()}, str(weights))
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    rc, _, err = run_cli(["segment", str(tmp_path / "p.png"), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c"),
                          "--model", "tiny-random", "--points-per-side", "4", "--device", "cpu", "--no-track", "-q",
                          "--features", TINY_RANDOM, "--features-checkpoint", str(weights), "--orchestrator", "prefect"])
    assert rc == 0, err
    summary = json.loads((tmp_path / "out" / "p" / "summary.json").read_text())
    assert summary["prefect_flow_run_id"]  # it ran as a flow
    assert summary["features"]["sha256"] == file_sha256(weights) and summary["features"]["checkpoint_path"] == str(weights)
