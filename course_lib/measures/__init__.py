"""Measures: numbers about samples and models.

    metrics       confident fraction, class histogram, FID with its floor (read with the course classifier);
                  the cosine-similarity matrix of vectors
    diagnostics   the checks that catch the classic diffusion bugs (appendix A1)

May import: ``diffusion/``, ``networks/``, ``data/``, ``text/`` and the base. Never ``training/`` or the
registry: a measure is handed its classifier and its model.
"""
