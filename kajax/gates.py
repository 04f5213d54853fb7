"""The per-task channel gate a_t^k of the student (docs/method.md §1, "Student").

After its branch point k, task t rescales the shared feature f_k channel by channel before its
own decoder blocks run: global average pool over H,W -> 1x1 conv C->max(16, C//4) (no bias)
-> ReLU -> 1x1 conv back to C (no bias) -> sigmoid -> multiply onto f_k.

Two forms:
  * ``'identity'`` (kajax's default): ``2 * sigmoid(z)`` with the last conv zero-initialised,
    so the gate is exactly 1 at initialisation and a student copied from its teachers
    reproduces them;
  * ``'port'``: plain ``sigmoid(z)`` with the default initialisation, as in KamalEngine's
    ``task_branching.py`` (about 0.5 at initialisation: it halves the features).

Pooling is global in both forms; the port's H x H pooling window is a known defect (it is not
global on non-square maps).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

GATE_FORMS = ("identity", "port")


def gate_hidden_width(channels: int) -> int:
  """Width of the gate's bottleneck for a C-channel feature: max(16, C // 4)."""
  return max(16, channels // 4)


def check_gate_form(form: str) -> str:
  """Returns ``form`` or raises a ValueError naming the allowed forms."""
  if form not in GATE_FORMS:
    raise ValueError(f"gate_form={form!r} is not a channel-gate form; choose one of "
                     f"{GATE_FORMS}.")
  return form


class ChannelGate(nn.Module):
  """Channel gate on an NHWC feature; returns the gated feature (same shape).

  Parameters: ``reduce/kernel`` (1,1,C,h) and ``expand/kernel`` (1,1,h,C), h = max(16, C//4).

  Attributes:
    form: 'identity' (2*sigmoid, last conv zero-initialised: exactly 1 at init) or 'port'
      (plain sigmoid with the default initialisation).
  """
  form: str = "identity"
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    check_gate_form(self.form)
    if x.ndim != 4:
      raise ValueError(f"ChannelGate expects an NHWC feature, got shape {x.shape}.")
    channels = x.shape[-1]
    # Global average pool over H and W (whatever the aspect ratio): (N, 1, 1, C).
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
    z = nn.Conv(gate_hidden_width(channels), (1, 1), use_bias=False,
                param_dtype=self.param_dtype, name="reduce")(pooled)
    z = nn.relu(z)
    expand_init = (nn.initializers.zeros if self.form == "identity"
                   else nn.linear.default_kernel_init)
    z = nn.Conv(channels, (1, 1), use_bias=False, kernel_init=expand_init,
                param_dtype=self.param_dtype, name="expand")(z)
    # identity: 2 * sigmoid(0) == 1 exactly in floating point.
    gate = 2.0 * nn.sigmoid(z) if self.form == "identity" else nn.sigmoid(z)
    return x * gate.astype(x.dtype)
