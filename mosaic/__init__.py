"""The ``mosaic-backup`` command: the composition root that starts an agent, a
coordinator, or talks to a coordinator as an operator. The only package that imports
both ``agent`` and ``coordinator``."""
