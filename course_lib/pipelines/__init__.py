"""Pipelines: a trained model folder in, images out (``from_pretrained`` / ``save_pretrained`` / ``__call__``).

    base            what they share: the folder's kind checked, its sampling defaults, seeding, the output
    class_to_image  lessons 03-05 and 12: ``DenoiserPipeline``, ``ClassToImage``, ``FlowToImage``
    text_to_image   lessons 08-09: ``TextToImage`` and ``TextToImageLM``
    unclip          lesson 10: ``UnCLIP`` (prior + decoder, variations)
    latent          lesson 11: ``LatentDiffusion`` (autoencoder + latent UNet)
    mini_sd3        lesson 13: ``MiniSD3Pipeline`` (MiniLM + MMDiT + autoencoder)

A call takes what the model is conditioned on (``labels=``, ``prompts=`` or ``n=``) plus ``steps=``,
``guidance=``, ``seed=``, and returns (B, 1, 28, 28) float32 on the CPU in [-1, 1]; the defaults are the
folder's (``config.json["sampling"]``). ``course_lib.load_pipeline(name_or_folder)`` picks the class.

May import: ``diffusion/``, ``networks/``, ``text/`` and the base. Never ``training/``, ``data/``, the
registry or ``plotting``.
"""
