"""genjax: generative models (VAE, GAN, DDPM) of brain MRI in JAX/Flax.

The package's modules are imported by name (`from genjax import train`); this
file makes `genjax` a regular package, so that `pip install` ships it.
"""
