"""Peak FLOP/s for MFU (dense data-sheet figures on GPUs, the best measured rate on CPUs) and
the fp32 matmul precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lmlab.train.hardware as hw
from lmlab.config import resolve_configs
from lmlab.errors import ConfigError
from lmlab.train.compose import compose_train


@pytest.fixture
def restore_matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def test_tf32_is_set_for_cuda_runs_only(restore_matmul_precision) -> None:
    torch.set_float32_matmul_precision("highest")
    hw.set_matmul_precision("high", torch.device("cpu"))
    assert torch.get_float32_matmul_precision() == "highest"  # CPU results stay full fp32
    hw.set_matmul_precision("high", torch.device("cuda"))
    assert torch.get_float32_matmul_precision() == "high"
    with pytest.raises(ConfigError, match="matmul_precision='tf32': allowed highest, high, medium"):
        resolve_configs(compose_train(["matmul_precision=tf32"]))


@pytest.mark.parametrize(
    ("name", "precision", "peak"),
    [
        ("NVIDIA H200", "bf16-mixed", 989.4e12),  # Lightning's H200 rows: sparse, other names
        ("NVIDIA H100 80GB HBM3", "bf16-mixed", 989.4e12),  # Lightning's table
        ("NVIDIA A100-SXM4-80GB", "bf16-mixed", 312e12),
        # fp16 was taken against the fp32 (or TF32) peak: MFU 2x to 15x too high
        ("NVIDIA H200", "16-mixed", 989.4e12),
        ("NVIDIA H100 80GB HBM3", "16-true", 989.4e12),
        ("Tesla V100-SXM2-16GB", "16-mixed", 125e12),
        ("NVIDIA H200", "32-true", 66.9e12),  # matmul_precision=highest here
        # Transformer Engine: Lightning's bf16 (fp16) weights, not fp32's peak (MFU 15x high)
        ("NVIDIA H100 80GB HBM3", "transformer-engine", 989.4e12),
        ("NVIDIA H200", "transformer-engine-float16", 989.4e12),
        # NVL cards: Lightning's "h100 nvl" row is 2x one card's dense peak (MFU halved), and
        # "NVIDIA H200 NVL" took the H200 SXM's 989.4 (MFU 18% low)
        ("NVIDIA H100 NVL", "bf16-mixed", 835.5e12),
        ("NVIDIA H200 NVL", "bf16-mixed", 835.5e12),
        ("NVIDIA H100 NVL", "32-true", 60e12),
        # Lightning's bf16 and fp16 for these are the shaders' fp32 rate: MFU 2x to 4x too high
        ("NVIDIA RTX A6000", "bf16-mixed", 154.8e12),
        ("NVIDIA A40", "16-mixed", 149.7e12),
        ("NVIDIA GeForce RTX 4090", "bf16-mixed", 165.2e12),
        ("NVIDIA GeForce RTX 4080 SUPER", "bf16-mixed", 104.4e12),  # not the RTX 4080's
        ("NVIDIA GeForce RTX 4080", "bf16-mixed", 97.5e12),
        ("NVIDIA GeForce RTX 3090 Ti", "bf16-mixed", 80e12),  # not the RTX 3090's
        ("NVIDIA GeForce RTX 3090", "bf16-mixed", 71e12),
        ("NVIDIA GeForce RTX 3090", "32-true", 35.6e12),
        ("NVIDIA RTX A4000", "bf16-mixed", 76.7e12),  # Lightning's parse found "a40" in it
        ("NVIDIA RTX A5500", "bf16-mixed", None),  # in neither table
    ],
)
def test_gpu_peaks_are_dense_data_sheet_figures(
    monkeypatch: pytest.MonkeyPatch, name: str, precision: str, peak: float | None
) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "highest")
    peak_here = hw.peak_flops(torch.device("cuda"), precision, "unused")
    assert peak_here == (None if peak is None else pytest.approx(peak))


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [("16-mixed", torch.float16), ("bf16-true", torch.bfloat16), ("32-true", torch.float32)],
)
def test_the_cpu_peak_is_measured_in_the_runs_compute_dtype(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str, dtype: torch.dtype
) -> None:
    measured: list[torch.dtype] = []

    def fake(dtype, n=1024, seconds=1.0, shape=None, timings=None):
        measured.append(dtype)
        return 75.0

    monkeypatch.setattr(hw, "measure_cpu_matmul_flops", fake)
    assert hw.peak_flops(torch.device("cpu"), precision, tmp_path) == 75.0
    assert measured == [dtype]
    assert [k.split("|")[2] for k in json.loads((tmp_path / "peak_flops.json").read_text())] == [
        hw.DTYPE_NAMES[dtype]
    ]


def test_cpu_peak_is_the_best_rate_seen_and_covers_the_runs_own_shapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peak measured while other work ran (50) is raised by the next run (200), never
    lowered (120); every run measures its own largest linear shapes."""
    timed: list[tuple | None] = []
    rates = iter([50.0, 40.0, 200.0, 120.0])

    def fake(dtype, n=1024, seconds=1.0, shape=None, timings=None):
        timed.append(shape)
        return next(rates)

    monkeypatch.setattr(hw, "measure_cpu_matmul_flops", fake)
    head = (4096, 128, 4096)
    assert hw.cpu_peak_flops(torch.float32, tmp_path, [head]) == 50.0  # square 50, head 40
    assert timed == [None, head]
    assert hw.cpu_peak_flops(torch.float32, tmp_path, [head]) == 200.0  # cached: the head alone
    assert hw.cpu_peak_flops(torch.float32, tmp_path, [head]) == 200.0  # 120 does not lower it
    assert timed == [None, head, head, head]


def test_a_cache_that_cannot_be_written_still_gives_the_peak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only (shared) cache: the run takes its own figure and says why it is not kept;
    a cache whose peak this run does not raise is not written at all."""
    rates = iter([75.0, 60.0, 90.0])
    monkeypatch.setattr(hw, "measure_cpu_matmul_flops", lambda *a, **k: next(rates))
    assert hw.cpu_peak_flops(torch.float32, tmp_path) == 75.0
    kept = (tmp_path / "peak_flops.json").read_bytes()
    writes: list[Path] = []

    def read_only(path: Path, data: object) -> Path:
        writes.append(path)
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(hw, "write_json", read_only)
    assert hw.cpu_peak_flops(torch.float32, tmp_path, [(8, 8, 8)]) == 75.0 and writes == []  # 60
    assert hw.cpu_peak_flops(torch.float32, tmp_path, [(8, 8, 8)]) == 90.0 and len(writes) == 1
    assert "peak FLOP/s not kept in" in caplog.text and "Read-only file system" in caplog.text
    assert (tmp_path / "peak_flops.json").read_bytes() == kept


@pytest.mark.parametrize(
    "damage",
    [b'{"cpu|2|fp32|lin', b"[1, 2]", b'{"k": "fast"}', b"\xff\x00"]
    + [b'{"k": NaN}', b'{"k": Infinity}', b'{"k": 0}'],  # MFU was nan, 0.0, a division by 0
)
def test_a_damaged_peak_cache_is_measured_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: bytes
) -> None:
    """Another run's interrupted write, or any unreadable file: measured anew and rewritten
    whole, never a failed run."""
    monkeypatch.setattr(hw, "measure_cpu_matmul_flops", lambda *a, **k: 75.0)
    (tmp_path / "peak_flops.json").write_bytes(damage)
    assert hw.cpu_peak_flops(torch.float32, tmp_path) == 75.0
    assert list(json.loads((tmp_path / "peak_flops.json").read_text()).values()) == [75.0]
    assert [p.name for p in tmp_path.iterdir()] == ["peak_flops.json"]  # no temporary left


def test_a_small_layer_is_timed_a_bounded_number_of_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's own small layers take microseconds a matmul: their best is taken over
    ``SHAPE_TIMINGS`` timings of four matmuls (after three to warm up), not over a twentieth of
    a second of them, which every run paid at its start."""
    calls = 0
    matmul = torch.Tensor.__matmul__

    def counted(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return matmul(a, b)

    monkeypatch.setattr(torch.Tensor, "__matmul__", counted)
    rate = hw.measure_cpu_matmul_flops(torch.float32, seconds=60.0, shape=(8, 8, 8), timings=5)
    assert calls == 3 + 4 * 5 and rate > 0
    # a run's start, the square's peak cached (1 FLOP/s): its layer alone, SHAPE_TIMINGS times
    with monkeypatch.context() as patch:
        patch.setattr(hw, "measure_cpu_matmul_flops", lambda *a, **k: 1.0)
        hw.cpu_peak_flops(torch.float32, tmp_path)
    calls = 0
    assert hw.cpu_peak_flops(torch.float32, tmp_path, [(8, 8, 8)]) > 1.0
    assert calls == 3 + 4 * hw.SHAPE_TIMINGS
