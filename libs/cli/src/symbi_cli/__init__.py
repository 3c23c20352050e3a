"""The ``symbi`` command line."""
