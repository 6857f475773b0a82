"""The data path: repository format, keys, storage targets, backup, restore and maintenance.

Imported by ``agent`` and ``mosaic`` only; imports only ``shared``."""
