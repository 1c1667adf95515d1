"""The networks: ``nn.Module``s and their config dataclasses; token ids in, tensors out.

    unet            the denoising UNet, its config, ``TextCond``; ``load_unet`` reads a model folder
    text_encoders   lesson 08's frozen ``TextEncoder`` (CLIP's text side) and lesson 09's ``LanguageEncoder``
    clip            CLIP on captioned digits: building, embedding, saving and loading it; OpenAI's CLIP
    autoencoder     lesson 11's KL autoencoder
    mmdit           lesson 13's MMDiT (Stable Diffusion 3's backbone, small)
    prior           lesson 10's diffusion prior over CLIP vectors
    classifier      the course classifier every measure reads digits with
    toy             the toys: lesson 03's 2-D denoiser, lesson 06's word vectors

May import: the base (``store``, ``hub``, ``config``, ``paths``). Never ``diffusion/``, ``data/``,
``training/``, ``pipelines/`` or the registry (``tests/test_layout.py`` checks; its ``EXCEPTIONS`` names what
``clip`` still reads from ``text/``).
"""
