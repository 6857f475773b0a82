"""Targets: bytes at keys, one module per kind, assembled with their wrappers in
:mod:`engine.storage.open`."""
