"""bf16 precision of the text encoder: the auto rule, its encoder id, agreement with fp32,
vectors that do not depend on their batch, and caches that never mix precisions."""

# Telemetry and network switches are set once for every test in tests/conftest.py.

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from components.embed import (
    EmbeddingCache,
    ItemEmbeddings,
    TextEncoder,
    cpu_flags,
    cpu_has_bf16,
    embed_items,
    encoder_from_settings,
    encoder_identity,
    item_texts,
    length_batches,
    load_encoder,
    resolve_precision,
)
from components.errors import EncoderError
from components.settings import EmbedSettings, load_settings
from tests.unit._model_fixtures import accepted_snapshot, items_frame

# Six pairs of related texts (written for this test), of different token counts, plus edge cases.
TEXTS = [
    "A space opera about astronauts on a starship",
    "Science fiction film set in outer space, with a crew lost between the stars",
    "A chef opens a small restaurant in Paris and falls in love with the city",
    "Cooking, food and romance in a French bistro",
    "Heat (1995). Genres: Action, Crime, Thriller. Tags: heist, bank robbery",
    "A crime thriller about a bank heist and the detective who hunts the robbers",
    "Toy Story (1995). Genres: Adventure, Animation, Children, Comedy. Tags: pixar, toys",
    "Animated film for kids about toys that come alive",
    "A haunted house, a family and the ghost in the attic. Genres: Horror",
    "Scary movie about a ghost haunting a family home",
    "Documentary about whales and life in the deep ocean",
    "Nature film: dolphins, sharks and coral reefs under the sea",
    "x",
    "",
    "東京の映画",
    " ".join(["apple"] * 300),  # truncated to max_length
]
PAIRS = [(i, i + 1) for i in range(0, 12, 2)]


@pytest.fixture(scope="module")
def fp32_encoder() -> TextEncoder:
    return load_encoder(None, 128, precision="fp32")


@pytest.fixture(scope="module")
def bf16_encoder() -> TextEncoder:
    """bf16 autocast; on a CPU without bf16 instructions torch emulates it (slower, same rules)."""
    return load_encoder(None, 128, precision="bf16")


@pytest.fixture(scope="module")
def fp32_vectors(fp32_encoder) -> np.ndarray:
    return fp32_encoder.encode(TEXTS)


@pytest.fixture(scope="module")
def bf16_vectors(bf16_encoder) -> np.ndarray:
    return bf16_encoder.encode(TEXTS)


# --------------------------------------------------------------------------- the auto rule


@pytest.mark.parametrize(
    ("flags", "backend", "device", "expected"),
    [
        ({"avx512f", "amx_tile", "amx_bf16"}, "torch", "cpu", "bf16"),
        ({"avx512f", "avx512_bf16"}, "torch", "cpu", "fp32"),  # measured slower than fp32 without AMX
        ({"avx2", "fma", "avx512f", "avx512_vnni"}, "torch", "cpu", "fp32"),
        ({"avx2"}, "torch", "cpu", "fp32"),
        (set(), "torch", "cpu", "fp32"),  # no /proc/cpuinfo (not Linux): no flags
        ({"amx_bf16", "avx512_bf16"}, "onnx", "cpu", "fp32"),
        ({"amx_bf16", "avx512_bf16"}, "torch", "cuda", "fp16"),  # CUDA keeps its half-precision path
    ],
)
def test_auto_precision_by_cpu_flags(flags, backend, device, expected):
    assert resolve_precision("auto", backend=backend, device=device, flags=flags) == expected


def test_explicit_precision_overrides_the_cpu():
    assert resolve_precision("fp32", flags={"amx_bf16"}) == "fp32"
    assert resolve_precision("bf16", flags={"avx2"}) == "bf16"
    assert resolve_precision("fp32", backend="onnx") == "fp32"
    assert resolve_precision("fp32", device="cuda") == "fp32"
    with pytest.raises(EncoderError, match="unknown precision 'fp8'"):
        resolve_precision("fp8")


def test_cpu_flags_come_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
    )
    flags = cpu_flags(cpuinfo)
    assert {"avx2", "avx512f", "avx512_bf16"} <= flags and "vendor_id" not in flags
    assert cpu_has_bf16(flags)
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert not cpu_has_bf16(cpu_flags(tmp_path / "missing"))
    assert not cpu_has_bf16({"avx2", "avx512f", "avx512_vnni"})
    assert isinstance(cpu_has_bf16(), bool)  # this machine's own /proc/cpuinfo


def test_auto_encoder_follows_the_cpu_flags(fp32_encoder, bf16_encoder):
    machine = resolve_precision("auto")
    auto = load_encoder(None, 128)  # what the service loads without a precision: the same as the settings' default
    assert auto.precision == machine
    assert auto is (bf16_encoder if machine == "bf16" else fp32_encoder)
    assert TextEncoder(None, flags={"avx2"}).precision == "fp32"


# --------------------------------------------------------------------------- settings


def test_precision_setting_defaults_to_auto_and_takes_overrides(tmp_path, monkeypatch):
    assert EmbedSettings().precision == "auto"
    assert load_settings(data_root=tmp_path, embed={"precision": "fp32"}).embed.precision == "fp32"
    monkeypatch.setenv("LMRECSYS_EMBED__PRECISION", "bf16")
    assert load_settings(data_root=tmp_path).embed.precision == "bf16"


def test_settings_choose_the_encoder_precision(tmp_path, fp32_encoder, bf16_encoder):
    assert encoder_from_settings(load_settings(data_root=tmp_path, embed={"precision": "fp32"})) is fp32_encoder
    assert encoder_from_settings(load_settings(data_root=tmp_path, embed={"precision": "bf16"})) is bf16_encoder


def test_unknown_precision_fails_validation():
    with pytest.raises(ValidationError, match="precision") as error:
        EmbedSettings(precision="fp8")
    assert "'auto', 'fp32' or 'bf16'" in str(error.value)


def test_bf16_with_onnx_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"embed\.precision='bf16' needs embed\.backend='torch'"):
        EmbedSettings(backend="onnx", precision="bf16")
    assert EmbedSettings(backend="onnx", precision="fp32").precision == "fp32"
    with pytest.raises(EncoderError, match=r"embed\.precision='bf16' needs embed\.backend='torch'"):
        TextEncoder(None, backend="onnx", precision="bf16", artifacts_dir=tmp_path)


def test_emulated_bf16_warns_that_it_is_slow(caplog):
    with caplog.at_level(logging.WARNING, logger="components.embed"):
        encoder = TextEncoder(None, precision="bf16", flags={"avx2"})
    assert encoder.precision == "bf16"
    assert "torch emulates bfloat16" in caplog.text


# --------------------------------------------------------------------------- identity and agreement


def test_bf16_has_its_own_encoder_id(fp32_encoder, bf16_encoder):
    base = encoder_identity(fp32_encoder.path)
    assert fp32_encoder.encoder_id == base["encoder_id"]  # fp32 ids are what they always were
    assert fp32_encoder.identity == base
    assert bf16_encoder.encoder_id == base["encoder_id"] + "-bf16"
    assert bf16_encoder.identity["precision"] == "bf16"
    assert bf16_encoder.identity["weights_sha256"] == base["weights_sha256"]
    assert bf16_encoder.autocast and not fp32_encoder.autocast


def test_bf16_vectors_agree_with_fp32(fp32_vectors, bf16_vectors):
    assert bf16_vectors.dtype == np.float32 and bf16_vectors.shape == fp32_vectors.shape
    np.testing.assert_allclose(np.linalg.norm(bf16_vectors, axis=1), 1.0, atol=1e-5)
    cosines = (bf16_vectors * fp32_vectors).sum(axis=1)
    assert cosines.min() >= 0.999, cosines
    assert not np.array_equal(bf16_vectors, fp32_vectors)  # really another numeric path

    def nearest(vectors):
        similarity = vectors[:12] @ vectors[:12].T
        np.fill_diagonal(similarity, -np.inf)
        return similarity.argmax(axis=1)

    np.testing.assert_array_equal(nearest(bf16_vectors), nearest(fp32_vectors))
    assert all(nearest(bf16_vectors)[a] == b and nearest(bf16_vectors)[b] == a for a, b in PAIRS)


# --------------------------------------------------------------------------- batches


def row_count_invariant_kernels() -> bool:
    """Whether this CPU's bf16 matrix products give a row the same bits whatever the row count.

    True for oneDNN's AVX-512-BF16 kernels (CPUs without AMX) and for emulated bf16. Its AMX
    kernels choose their blocking by the row count, so there a vector moves with its batch's size.
    """
    return "amx_bf16" not in cpu_flags() or os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX512_CORE_BF16"


def assert_same_bf16_vectors(actual: np.ndarray, expected: np.ndarray) -> None:
    """Bit-identical; with AMX kernels, only close (docs/embeddings.md, "Precision")."""
    if row_count_invariant_kernels():
        np.testing.assert_array_equal(actual, expected)
    else:
        np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-3)
        assert (np.atleast_2d(actual) * np.atleast_2d(expected)).sum(axis=1).min() > 0.9999


def test_length_batches():
    lengths = np.array([5, 7, 5, 9, 7, 5, 5])
    assert [b.tolist() for b in length_batches(lengths, 3)] == [[3, 1, 4], [0, 2, 5], [6]]
    assert [b.tolist() for b in length_batches(lengths, 3, equal_only=True)] == [[3], [1, 4], [0, 2, 5], [6]]
    assert length_batches(np.array([], dtype=np.int64), 4, equal_only=True) == []


def test_bf16_batches_never_pad(bf16_encoder, bf16_vectors, monkeypatch):
    seen = []
    run = bf16_encoder._run_torch
    monkeypatch.setattr(bf16_encoder, "_run_torch", lambda batch: seen.append(batch["attention_mask"]) or run(batch))
    vectors = bf16_encoder.encode(TEXTS * 3, batch_size=4)
    assert all(mask.all() for mask in seen)  # one token count per batch: nothing to pad
    widths = [mask.shape[1] for mask in seen]
    assert widths == sorted(widths, reverse=True)
    assert sum(mask.shape[0] for mask in seen) == len(TEXTS) * 3
    assert_same_bf16_vectors(vectors, np.tile(bf16_vectors, (3, 1)))


def test_bf16_vector_does_not_depend_on_its_batch(bf16_encoder, bf16_vectors):
    """Each text alone, among TEXTS, and in a mixed batch where it shares its token count with others."""
    fillers = [
        "A space opera about pirates on a starship",
        "Heat",
        "Toy Story (1995)",
        "Cooking, food and romance in a French cafe",
    ]
    for position in (0, 3, 4, 7, 12, 13):  # several token counts, "x" and the empty text
        text = TEXTS[position]
        alone = bf16_encoder.encode([text])[0]
        start = position % 4
        mixed = bf16_encoder.encode(fillers[:start] + [text] + fillers + TEXTS[::3] + [text] * 3, batch_size=8)
        assert_same_bf16_vectors(mixed[start], alone)
        assert_same_bf16_vectors(bf16_vectors[position], alone)


@pytest.mark.skipif(row_count_invariant_kernels(), reason="bit-identity is checked in process above")
def test_bf16_vector_is_bit_identical_in_any_batch_with_avx512_bf16_kernels():
    """On an AMX CPU: the check above, bit for bit, with oneDNN held to the kernels of CPUs without AMX."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{__file__}::test_bf16_vector_does_not_depend_on_its_batch",
        ],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


# --------------------------------------------------------------------------- the cache


def test_caches_of_the_two_precisions_never_mix(tmp_path, fp32_encoder, bf16_encoder):
    fp32_settings = load_settings(data_root=tmp_path, embed={"precision": "fp32"})
    bf16_settings = load_settings(data_root=tmp_path, embed={"precision": "bf16"})
    items = items_frame()
    snapshot = accepted_snapshot(fp32_settings, items)

    fp32_folder = embed_items(fp32_settings, snapshot)
    bf16_folder = embed_items(bf16_settings, snapshot)
    fp32_manifest = json.loads((fp32_folder / "manifest.json").read_text())
    bf16_manifest = json.loads((bf16_folder / "manifest.json").read_text())
    assert fp32_manifest["encoded_now"] == 8
    assert bf16_manifest["encoded_now"] == 8 and bf16_manifest["from_cache"] == 0  # nothing read from the fp32 cache
    assert bf16_manifest["encoder"]["precision"] == "bf16" and "precision" not in fp32_manifest["encoder"]
    assert (
        fp32_folder != bf16_folder
        and fp32_folder.name == fp32_encoder.encoder_id
        and bf16_folder.name == bf16_encoder.encoder_id
    )

    fp32 = ItemEmbeddings.load(fp32_folder).vectors
    bf16 = ItemEmbeddings.load(bf16_folder).vectors
    texts = item_texts(items)
    assert_same_bf16_vectors(bf16, bf16_encoder.encode(texts))
    np.testing.assert_allclose(fp32, fp32_encoder.encode(texts), atol=1e-5)
    assert (fp32 * bf16).sum(axis=1).min() >= 0.999 and not np.array_equal(fp32, bf16)

    # Each precision's cache holds its own vectors, and a re-run reads only its own.
    again = json.loads((embed_items(bf16_settings, snapshot) / "manifest.json").read_text())
    assert again["encoded_now"] == 0 and again["from_cache"] == 8
    np.testing.assert_array_equal(ItemEmbeddings.load(bf16_folder).vectors, bf16)
    fp32_cache = EmbeddingCache(fp32_settings.embeddings_dir, fp32_encoder.encoder_id).load()
    bf16_cache = EmbeddingCache(bf16_settings.embeddings_dir, bf16_encoder.encoder_id).load()
    assert fp32_cache.keys() == bf16_cache.keys()
    assert all(not np.array_equal(fp32_cache[key], bf16_cache[key]) for key in fp32_cache)
