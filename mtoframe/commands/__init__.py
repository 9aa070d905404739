"""Sub-commands of the ``mtoframe`` CLI (see :mod:`mtoframe.cli`)."""
