"""sdflow: declarative Stable Diffusion workflows — typed node graphs run with one component cache."""

__version__ = "0.1.0"
