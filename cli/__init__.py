"""The ``reweigh`` command line."""
