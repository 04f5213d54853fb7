"""kajax: knowledge amalgamation of dense-prediction teachers into one multi-task student.

Implements *Student Becoming the Master* (Ye et al., CVPR 2019) in JAX/Flax. Importing the
package registers kajax's TFDS builders (``synthetic_rooms``, ``nyuv2``), so
``tfds.data_source('synthetic_rooms/small', ...)`` works after ``import kajax``.
"""

from kajax import datasets  # noqa: F401  (registers the TFDS builders)

__version__ = "0.1.0"
