"""The data: MNIST, captions measured from the images, clusters.

    mnist       MNIST as tensors in [-1, 1], checksummed downloads, batches
    captions    attributes measured from each image (thickness, slant, width) and random true captions
    clusters    k-means over the digits, for the unconditional denoiser's guidance

May import: the base and ``text/`` (captions need the vocabulary). Never ``networks/``, ``training/``.
"""
