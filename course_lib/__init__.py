"""course_lib: the reference implementation behind *From Noise to Digits*.

One idea per module, in the order the lessons meet them:

    config      profiles (test / cpu / gpu), device and precision, seeding
    paths       where data, checkpoints and shipped weights live
    data        MNIST as tensors in [-1, 1]
    plotting    image grids, strips and animations
    exercises   automatic checks for the lessons' exercises
    schedules   noise schedules (linear, cosine) and derived quantities
    forward     the diffusion model: the forward Markov chain, its posterior, the ELBO
"""
from .config import Profile, get_profile, get_runtime, seed_everything, setup  # noqa: F401

__version__ = "0.1.0"
