"""Noise schedules, SDEs, the denoising loss and samplers, as pure functions.

See `schedules` for the timestep convention (index t = t+1 noising steps).
"""

from genjax.diffusion.losses import denoising_loss
from genjax.diffusion.losses import gaussian_noise
from genjax.diffusion.samplers import get_sampler
from genjax.diffusion.samplers import noise_and_denoise
from genjax.diffusion.samplers import register_sampler
from genjax.diffusion.samplers import sampler_names
from genjax.diffusion.schedules import make_schedule
from genjax.diffusion.schedules import noise_level_to_index
from genjax.diffusion.schedules import q_sample
from genjax.diffusion.schedules import Schedule
from genjax.diffusion.sde import VESDE
from genjax.diffusion.sde import VPSDE
from genjax.diffusion.simplex import simplex_noise
from genjax.diffusion.simplex import simplex_noise_fn
