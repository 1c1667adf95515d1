"""The diffusion model and its reverse processes: the maths, with no network and no data.

    schedules   noise schedules (linear, cosine) and derived quantities
    forward     the forward Markov chain, its posterior, the ELBO, L_simple
    samplers    DDPM and DDIM (``model(x, t, cond)`` is any callable), respacing, batched sampling
    flow        flow matching: the straight path, the velocity target, Euler and Heun
    guidance    classifier-free guidance and autoguidance, as model wrappers

May import: the base (``config``: autocast). Never ``networks/``, ``data/``, ``training/``: the chain and the
samplers take a model as a callable (``tests/test_layout.py`` checks).
"""
