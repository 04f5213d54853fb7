"""kajax: knowledge amalgamation of dense-prediction teachers into one multi-task student.

Implements *Student Becoming the Master* (Ye et al., CVPR 2019) in JAX/Flax. Importing the
package is cheap; dataset builders are registered by importing ``kajax.datasets``.
"""

__version__ = "0.1.0"
