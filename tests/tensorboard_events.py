"""Reads TensorBoard event files written by kajax (tensorboardX) without TensorFlow."""

import os
import struct

from tensorboardX.proto import event_pb2


def read(directory):
  """Every ``Event`` of the event files in ``directory``, in file order."""
  events = []
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):  # TFRecord: length u64, its crc u32, payload, payload crc u32.
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[pos + 12:pos + 12 + length])
      events.append(event)
      pos += 12 + length + 4
  return events


def scalars(directory, tag):
  """``{step: value}`` of one scalar tag."""
  return {e.step: v.simple_value for e in read(directory) for v in e.summary.value
          if v.tag == tag}
