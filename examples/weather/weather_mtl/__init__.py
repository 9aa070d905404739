"""A small multi-task problem written the way a user writes one, for ``mtoframe train`` and
``mtoframe compare`` (config: ``examples/weather.toml``).

Each item is one day of 24 sensor readings; three tasks share an MLP encoder: the next day's
``temperature`` (regression), whether it ``rain``\\ s (two classes) and the ``wind`` speed
(regression, on a scale ten times the temperature's, so plain loss summing lets it dominate).
Nothing here imports mtoframe internals beyond the public ``MultiTaskModel``.
"""
