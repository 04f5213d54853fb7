"""Tests of kajax.scaling_estimate's throughput model against a hand calculation."""

import pytest

from kajax import scaling_estimate


def test_images_per_second_by_hand():
  # 4 devices, 2 images each, 1 GFLOP per image, 1 TFLOP/s peak at 50%: 2e9 / 5e11 = 4 ms.
  # All-reduce of 100 MB at 1 GB/s one way (2 GB/s bidirectional): 2 * 3/4 * 0.1 s = 150 ms.
  rate, t_compute, t_allreduce = scaling_estimate.images_per_second(
      4, 2, 1e9, 1e12, 0.5, 1e8, 2e9)
  assert t_compute == pytest.approx(4e-3)
  assert t_allreduce == pytest.approx(0.15)
  assert rate == pytest.approx(8 / 0.154)


def test_one_device_has_no_allreduce():
  rate, _, t_allreduce = scaling_estimate.images_per_second(1, 8, 2e9, 1e12, 1.0, 1e9, 1e9)
  assert t_allreduce == 0.0 and rate == pytest.approx(8 / (8 * 2e9 / 1e12))


def test_table_rows_follow_the_model():
  table = scaling_estimate.markdown_table(1e11, 10_000_000, 8, 0.4).splitlines()
  assert len(table) == 2 + len(scaling_estimate.SLICES)
  s = scaling_estimate.SLICES[0]
  rate, _, _ = scaling_estimate.images_per_second(s.devices, 8, 1e11, s.peak_tflops * 1e12,
                                                  0.4, 4e7, s.bidirectional_gbytes_per_s * 1e9)
  assert table[2].startswith(f"| {s.name} | {s.devices} |")
  assert table[2].endswith(f"| {rate:,.0f} |")
