"""Precision as a first-class setting (samseg.sam.precision): bf16 with the fast encoder and the
fast decoder (the out= buffer crash), the config/CLI/cache-key plumbing, fp32 unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samseg.engine.stages import stage_key
from samseg.core.config import PipelineConfig, get_preset
from samseg.sam.precision import PrecisionError, cast_floats, resolve_precision


@pytest.fixture(scope="module")
def models():
    from samseg.sam.model import load_model

    return {p: load_model("tiny-random", device="cpu", precision=p) for p in ("fp32", "bf16")}


def test_bf16_runs_fast_encoder_and_fast_decoder_and_agrees(models) -> None:
    from samseg.sam.amg import generate_masks
    from samseg.sam.encode import encode_image

    rgb = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    cfg = get_preset("smoke")
    out = {}
    for p, m in models.items():
        assert m.kernels == "fast" and m.precision == p
        assert not any("forward" in mod.__dict__ for mod in m.sam.modules())  # converted, never wrapped
        enc = encode_image(m, rgb)
        assert enc.features.dtype == np.float32  # thresholds and pooling see fp32
        out[p] = (enc, generate_masks(m, rgb, enc, cfg.amg))
    f32, b16 = out["fp32"][0].features, out["bf16"][0].features
    cos = (f32 * b16).sum(0) / (np.linalg.norm(f32, axis=0) * np.linalg.norm(b16, axis=0))
    assert cos.mean() > 0.99
    assert len(out["bf16"][1]) == len(out["fp32"][1]) > 0


def test_decoder_bf16_keeps_expanded_prompts_expanded() -> None:
    base = torch.randn(1, 8, 4, 4)
    dense = base.expand(64, -1, -1, -1)
    cast = cast_floats(dense, torch.bfloat16)
    assert cast.dtype == torch.bfloat16 and cast.stride(0) == 0 and cast.shape == dense.shape
    assert torch.equal(cast[5].float(), base[0].to(torch.bfloat16).float())


def test_precision_in_config_and_cache_key() -> None:
    cfg = get_preset("smoke")
    assert cfg.precision == "fp32" and cfg.flat()["precision"] == "fp32"
    assert PipelineConfig.from_flat({**cfg.flat(), "precision": "auto"}).precision == "auto"
    with pytest.raises(ValueError, match="precision must be one of"):
        cfg.replace(precision="fp8")
    key32 = stage_key("encode", "a" * 64, "c" * 64, cfg)
    assert stage_key("encode", "a" * 64, "c" * 64, cfg, "fp32") == key32  # fp32 keys unchanged
    assert stage_key("encode", "a" * 64, "c" * 64, cfg, "bf16") != key32
    # the REQUESTED value does not key, the resolved one does: auto that ran fp32 hits fp32 entries
    auto = cfg.replace(precision="auto")
    assert stage_key("amg", "a" * 64, "c" * 64, auto, "fp32") == stage_key("amg", "a" * 64, "c" * 64, cfg, "fp32")


def test_fp16_on_cpu_is_a_clear_error() -> None:
    with pytest.raises(PrecisionError, match="needs a CUDA device"):
        resolve_precision("fp16", "cpu")


def test_cli_precision_flag_reaches_summary_and_mlflow_params(prefect_api, tmp_path) -> None:
    import json

    from PIL import Image

    from cli_run import run_cli

    img = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(img)
    rc, _, stderr = run_cli(["segment", str(img), "--out", str(tmp_path / "o"), "--model", "tiny-random", "--preset",
                             "smoke", "--points-per-side", "4", "--device", "cpu", "--precision", "bf16",
                             "--cache", str(tmp_path / "c"), "--no-track"])
    assert rc == 0, stderr
    summary = json.loads((tmp_path / "o" / "p" / "summary.json").read_text())
    assert summary["config"]["precision"] == "bf16" and summary["model"]["precision"] == "bf16"
    from samseg.edges.mlflow.tracking import run_params

    assert run_params(summary)["precision_resolved"] == "bf16"
    rc, _, stderr = run_cli(["segment", str(img), "--out", str(tmp_path / "o2"), "--model", "tiny-random", "--device",
                             "cpu", "--precision", "fp16", "--no-track"])
    assert rc == 2 and "fp16 needs a CUDA device" in stderr


def test_bf16_attention_bias_in_the_gemm_equals_the_add_path() -> None:
    """The reduced-precision attention (bias folded into the score GEMM) computes SAM's
    attention: compared with segment_anything's own Attention.forward in fp32."""
    from segment_anything.modeling.image_encoder import Attention

    from samseg.sam.kernels.encoder import fast_attention_forward

    torch.manual_seed(0)
    for size, batch in ((14, 3), (16, 1), (32, 1)):  # windowed-like, global-like, global through SDPA
        att = Attention(dim=32, num_heads=2, qkv_bias=True, use_rel_pos=True, input_size=(size, size)).eval()
        torch.nn.init.normal_(att.rel_pos_h, std=0.5)
        torch.nn.init.normal_(att.rel_pos_w, std=0.5)
        x = torch.randn(batch, size, size, 32)
        with torch.inference_mode():
            ref = Attention.forward(att, x)
            got = fast_attention_forward(att.to(torch.bfloat16), x.to(torch.bfloat16)).float()
        assert torch.allclose(got, ref, atol=0.05, rtol=0.05), float((got - ref).abs().max())


def test_bf16_global_attention_through_sdpa_equals_the_loop(monkeypatch) -> None:
    """A global layer (≥ 1024 tokens) takes the fused-SDPA path in bf16 and agrees with the
    per-head loop it replaced and with SAM's fp32 attention."""
    import torch.nn.functional as F
    from segment_anything.modeling.image_encoder import Attention

    from samseg.sam.kernels import encoder as fast_encoder

    torch.manual_seed(1)
    att = Attention(dim=32, num_heads=2, qkv_bias=True, use_rel_pos=True, input_size=(32, 32)).eval()
    torch.nn.init.normal_(att.rel_pos_h, std=0.5)
    torch.nn.init.normal_(att.rel_pos_w, std=0.5)
    x = torch.randn(1, 32, 32, 32)
    calls = []
    real_sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real_sdpa(*a, **k))
    with torch.inference_mode():
        ref = Attention.forward(att, x)
        att16, x16 = att.to(torch.bfloat16), x.to(torch.bfloat16)
        fused = fast_encoder.fast_attention_forward(att16, x16).float()
        monkeypatch.setattr(fast_encoder, "SDPA_GLOBAL", False)
        loop = fast_encoder.fast_attention_forward(att16, x16).float()
    assert calls == [1]  # the fused kernel ran once (all heads), the loop not at all
    assert torch.allclose(fused, ref, atol=0.05, rtol=0.05), float((fused - ref).abs().max())
    assert torch.allclose(fused, loop, atol=0.05, rtol=0.05), float((fused - loop).abs().max())
