"""The course's own tools.

    weights   ``make weights``: train, measure and export the reference weights
    book      ``make course``: execute every lesson and render the course book
    links     the README's "Open in Colab" links, from one repository URL

May import: the registry, ``pipelines/``, ``plotting`` and the base (``tests/test_layout.py`` lists what
``weights`` still reaches below that, and why).
"""
