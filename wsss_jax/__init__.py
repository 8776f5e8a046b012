"""wsss-jax: Roy & Todorovic (CVPR 2017) weakly supervised segmentation in JAX."""

__version__ = '0.1.0'
