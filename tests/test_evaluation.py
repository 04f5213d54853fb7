"""Tests of kajax.evaluation: metrics over a split whose size is not a multiple of the batch,
on 8 devices, equal those a NumPy reference computes over exactly the split's examples.

The padding of the last batch repeats a real example (shapes must match); counting it would
weight that example several times, which the reference below would catch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kajax import evaluation, parallel

NUM_EXAMPLES = 13  # batches of 8 over 8 devices: 8 + 5 real, 3 padding
BATCH = 8
H, W, C = 12, 20, 4
MEAN = np.array([0.485, 0.456, 0.406])  # ImageNet statistics, the pipeline's default
STD = np.array([0.229, 0.224, 0.225])


def _split():
  rng = np.random.default_rng(0)
  examples = []
  for i in range(NUM_EXAMPLES):
    label = rng.integers(0, C, (H, W)).astype(np.uint8)
    label[rng.random((H, W)) < 0.1] = 255  # void
    depth = rng.uniform(0.5, 8.0, (H, W)).astype(np.float32)
    depth[rng.random((H, W)) < 0.1] = 0.0  # missing
    depth[0, :3] = 12.0  # beyond 10 m: invalid too
    # Example 0 (the padding's source) is made very different, so counting it again shows.
    image = rng.integers(0, 256, (H, W, 3)).astype(np.uint8) if i else np.zeros((H, W, 3),
                                                                                np.uint8)
    examples.append({"image": image, "label": label, "depth": depth})
  return examples


def _model_params():
  rng = np.random.default_rng(1)
  return {"seg": rng.normal(size=(3, C)).astype(np.float32),
          "depth": rng.normal(size=(3,)).astype(np.float32)}


def _model_fn(params, images):
  # A per-pixel linear model: logits, and depth = 3 * exp(linear) metres.
  return {"seg": images @ params["seg"],
          "depth": 3.0 * jnp.exp(0.3 * images @ params["depth"])[..., None]}


def _numpy_reference(examples, params):
  cm = np.zeros((C, C), np.int64)
  errors = {"sq": [], "abs_rel": [], "delta1": []}
  for ex in examples:
    x = (ex["image"] / 255.0 - MEAN) / STD
    pred = np.argmax(x @ params["seg"].astype(np.float64), -1)
    valid = ex["label"] < C
    np.add.at(cm, (ex["label"][valid], pred[valid]), 1)
    d = np.clip(3.0 * np.exp(0.3 * x @ params["depth"].astype(np.float64)), 1e-3, 10.0)
    g = ex["depth"].astype(np.float64)
    ok = (g > 1e-3) & (g <= 10.0)
    errors["sq"].append((d[ok] - g[ok]) ** 2)
    errors["abs_rel"].append(np.abs(d[ok] - g[ok]) / g[ok])
    errors["delta1"].append(np.maximum(d[ok] / g[ok], g[ok] / d[ok]) < 1.25)
  tp = np.diag(cm)
  union = cm.sum(0) + cm.sum(1) - tp
  seg = {"miou": np.mean(tp[union > 0] / union[union > 0]), "pixel_acc": tp.sum() / cm.sum(),
         "mean_acc": np.mean(tp[cm.sum(1) > 0] / cm.sum(1)[cm.sum(1) > 0])}
  depth = {"rmse": np.sqrt(np.concatenate(errors["sq"]).mean()),
           "abs_rel": np.concatenate(errors["abs_rel"]).mean(),
           "delta1": np.concatenate(errors["delta1"]).mean()}
  return seg, depth


def test_padded_last_batch_on_8_devices_matches_numpy():
  assert jax.device_count() == 8 and NUM_EXAMPLES % BATCH != 0
  examples, params = _split(), _model_params()
  mesh = parallel.make_mesh()
  got = evaluation.evaluate(_model_fn, parallel.replicate(params, mesh),
                            {"seg": {}, "depth": {}}, examples, None, BATCH, mesh,
                            num_outputs={"seg": C})
  seg, depth = _numpy_reference(examples, params)
  for key, value in seg.items():
    assert got["seg"][key] == pytest.approx(value, rel=1e-6), key
  for key, value in depth.items():
    assert got["depth"][key] == pytest.approx(value, rel=1e-5), key
  # The reference would differ if the 3 padding copies of example 0 were counted.
  padded_seg, padded_depth = _numpy_reference(examples + [examples[0]] * 3, params)
  assert abs(padded_seg["pixel_acc"] - seg["pixel_acc"]) > 1e-3
  assert abs(padded_depth["rmse"] - depth["rmse"]) > 1e-3
