"""The Python API: ``import whichmodel`` (filled in below)."""
