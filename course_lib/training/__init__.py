"""Training: one loop, and per model a recipe (its presets, its data source, its loss).

Every recipe module keeps its sizes and steps beside its code, as nanoGPT keeps a config per script: a frozen
dataclass, ``PRESETS = {"test": ..., "cpu": ..., "gpu": ...}``, and ``recipe_config(profile)`` (the preset,
with the profile's ``with_recipe`` changes); a generative recipe adds ``sampling_defaults(profile)``,
``{model name: {"sampler", "steps", "guidance", ...}}``.

    loop          ``fit``: AdamW, warm-up + cosine, EMA, mixed precision, resuming, hooks; ``TrainResult``
    checkpoints   the trainer's state, which runs may resume a folder, where training may write
    denoiser      lessons 03-05: the unconditional denoiser and the class model
    classifier    the course classifier's run
    clip          lesson 07: the caption dataset, the contrastive loss, the run
    text2image    lessons 08-09: the captioned dataset, the encoding cache, both text encoders' runs
    unclip        lesson 10: the decoder and the prior, with the prior's loss
    latent        lesson 11: the autoencoder and the latent model; step costs
    flow          lesson 12: the flow-matching model
    mini_sd3      lesson 13: the mini SD3 (its presets, latents and captions encoded once, flow matching)
    speedrun      lesson 12's speedrun: a small flow model against the clock, and the study's levers
    toy           lesson 02's 2-D toy (points, a tiny denoiser); lesson 06's word vectors

May import: ``diffusion/``, ``networks/``, ``data/``, ``text/``, ``pipelines/`` (an export writes a pipeline
folder) and the base. Never the registry or ``measures/`` (``tests/test_layout.py`` lists what still does, and
why).
"""
