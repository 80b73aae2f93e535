"""The fast encoder paths (ONNX Runtime, ONNX with int8 feed-forward) agree with the fp32 torch path."""

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from components.embed import TextEncoder, ensure_onnx_export, load_encoder
from components.errors import EncoderError

TEXTS = [
    "Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, Fantasy. Tags: pixar, fun",
    "Alien (1979). Genres: Horror, Sci-Fi. Tags: space, suspense",
    "A chef opens a small restaurant in Paris and falls in love with the city, its markets and its people",
    "x",
    "",
    "東京の映画",
    "Фильм про космос",
    " ".join(["apple"] * 400),  # truncated to max_length
]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """The torch fp32 vectors (pinned: on a CPU with bf16 instructions the default is bf16)."""
    return load_encoder(None, 128, precision="fp32").encode(TEXTS)


@pytest.fixture(scope="module")
def onnx_encoder(artifacts) -> TextEncoder:
    return TextEncoder(None, backend="onnx", artifacts_dir=artifacts)


@pytest.fixture(scope="module")
def int8_encoder(artifacts, onnx_encoder) -> TextEncoder:
    return TextEncoder(None, backend="onnx", quantize="ffn-int8", artifacts_dir=artifacts)


def test_onnx_fp32_matches_torch_fp32(onnx_encoder, reference):
    vectors = onnx_encoder.encode(TEXTS, batch_size=3)
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * reference).sum(axis=1)
    assert cosines.min() > 0.9999, cosines


def test_ffn_int8_stays_close_to_fp32(int8_encoder, reference):
    vectors = int8_encoder.encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * reference).sum(axis=1)
    assert cosines.mean() > 0.99 and cosines.min() > 0.97, cosines
    # The nearest other text of each text is the same as with fp32 for the clearly related pairs.
    assert vectors[0] @ vectors[1] == pytest.approx(reference[0] @ reference[1], abs=0.03)


def test_onnx_fp32_is_deterministic_and_batch_independent(onnx_encoder):
    first = onnx_encoder.encode(TEXTS, batch_size=4)
    np.testing.assert_array_equal(first, onnx_encoder.encode(TEXTS, batch_size=4))
    reversed_rows = onnx_encoder.encode(TEXTS[::-1], batch_size=2)[::-1]
    np.testing.assert_allclose(first, reversed_rows, atol=1e-5)


def test_ffn_int8_is_deterministic_and_nearly_batch_independent(int8_encoder):
    first = int8_encoder.encode(TEXTS, batch_size=4)
    np.testing.assert_array_equal(first, int8_encoder.encode(TEXTS, batch_size=4))
    # Dynamic quantisation scales activations per batch, so other batch-mates move a vector a little.
    reversed_rows = int8_encoder.encode(TEXTS[::-1], batch_size=2)[::-1]
    assert (first * reversed_rows).sum(axis=1).min() > 0.97


def test_each_variant_has_its_own_encoder_id(onnx_encoder, int8_encoder, reference):
    plain = load_encoder(None, 128, precision="fp32")
    bf16 = load_encoder(None, 128, precision="bf16")
    ids = {plain.encoder_id, onnx_encoder.encoder_id, int8_encoder.encoder_id, bf16.encoder_id}
    assert len(ids) == 4
    assert onnx_encoder.identity["weights_sha256"] == plain.identity["weights_sha256"]
    assert int8_encoder.identity["quantize"] == "ffn-int8"
    assert int8_encoder.encoder_id.startswith(plain.encoder_id)


def test_export_is_built_once_and_reused(artifacts, onnx_encoder, int8_encoder):
    files = sorted(p.name for p in (artifacts / onnx_encoder.base_identity["encoder_id"]).iterdir())
    assert files == ["model-ffn-int8.json", "model-ffn-int8.onnx", "model.json", "model.onnx"]  # no temporary left
    before = onnx_encoder.onnx_path.stat().st_mtime_ns
    again = ensure_onnx_export(onnx_encoder.path, onnx_encoder.base_identity, artifacts)
    assert again == onnx_encoder.onnx_path and again.stat().st_mtime_ns == before
    # The int8 graph really is smaller: its feed-forward weights are one byte each.
    assert int8_encoder.onnx_path.stat().st_size < 0.85 * onnx_encoder.onnx_path.stat().st_size


def test_stale_export_note_forces_a_rebuild(tmp_path, onnx_encoder):
    folder = tmp_path / onnx_encoder.base_identity["encoder_id"]
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not a model")
    (folder / "model.json").write_text(json.dumps({"export_version": -1}))
    rebuilt = ensure_onnx_export(onnx_encoder.path, onnx_encoder.base_identity, tmp_path)
    assert rebuilt.stat().st_size > 1_000_000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "tensorrt"}, "unknown encoder backend"),
        ({"backend": "onnx", "quantize": "int4"}, "unknown quantize mode"),
        ({"quantize": "ffn-int8"}, "needs backend='onnx'"),
        ({"backend": "onnx", "device": "cuda"}, "CPU only"),
        ({"dtype": "float12"}, "unknown dtype"),
        ({"max_length": 1}, "at least 2 tokens"),
        ({"precision": "fp16"}, "unknown precision"),
        ({"backend": "onnx", "precision": "bf16"}, "needs embed.backend='torch'"),
        ({"dtype": "float16", "precision": "bf16"}, "contradicts precision"),
    ],
)
def test_bad_speed_options_are_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(EncoderError, match=message):
        TextEncoder(None, artifacts_dir=tmp_path, **kwargs)
