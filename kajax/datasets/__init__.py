"""kajax's TFDS dataset builders; importing this package registers them with TFDS.

``synthetic_rooms``: procedural rooms, the embedded default data (no download).
``nyuv2``: NYU Depth V2 from the official labelled .mat or the MTAN .npy folders.
"""

from kajax.datasets import synthetic_rooms  # noqa: F401  (registers the builder)
from kajax.datasets import nyuv2  # noqa: F401  (registers the 'nyuv2' builder)
