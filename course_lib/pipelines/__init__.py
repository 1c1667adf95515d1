"""Pipelines: a trained model folder in, images out (``from_pretrained`` / ``save_pretrained`` / ``__call__``).

    text_to_image   lessons 08-09: ``TextToImage`` and ``TextToImageLM``
    unclip          lesson 10: ``UnCLIP`` (prior + decoder, variations)
    latent          lesson 11: ``LatentDiffusion`` (autoencoder + latent UNet)
    mini_sd3        lesson 13: ``MiniSD3Pipeline`` (MiniLM + MMDiT + autoencoder)

May import: ``diffusion/``, ``networks/``, ``text/`` and the base. Never ``training/``, ``data/``, the
registry or ``plotting``.
"""
