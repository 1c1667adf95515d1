"""Training: one loop, and per model a recipe (its config from the profile, its data source, its loss).

    loop          ``fit``: AdamW, warm-up + cosine, EMA, mixed precision, resuming; ``TrainResult``
    checkpoints   the trainer's state, which runs may resume a folder, where training may write
    denoiser      lessons 03-05: the unconditional denoiser and the class model
    classifier    the course classifier's run
    clip          lesson 07: the caption dataset, the contrastive loss, the run
    text2image    lessons 08-09: the captioned dataset, the encoding cache, both text encoders' runs
    unclip        lesson 10: the decoder and the prior, with the prior's loss
    latent        lesson 11: the autoencoder and the latent model; step costs
    flow          lesson 12: the flow-matching model
    mini_sd3      lesson 13: the mini SD3 (its presets, latents and captions encoded once, flow matching)
    toy           lesson 02's 2-D toy (points, a tiny denoiser)

May import: ``diffusion/``, ``networks/``, ``data/``, ``text/``, ``pipelines/`` (an export writes a pipeline
folder) and the base. Never the registry or ``measures/`` (``tests/test_layout.py`` lists what still does, and
why).
"""
