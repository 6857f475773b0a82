"""The commands of ``mosaic-backup``, one module each, all in one pattern.

A module ``mosaic.commands.<name>`` (``install-systemd`` → ``install_systemd``) has

- ``HELP``: its line in ``mosaic-backup --help`` (and ``DESCRIPTION``, optionally);
- ``register(p)``: adds its arguments to ``p``, the parser :mod:`mosaic.cli` made for it;
- ``async run(args, out, err) -> int``: does the work, printing results on ``out`` and
  progress on ``err``, and returns the exit code. A command with actions
  (``drill run`` / ``drill report``) sets ``func`` on each action's parser instead.
  A plain (not async) ``run(args)`` runs before any event loop, logging or thread
  starts: only ``wal-archive``, which PostgreSQL runs for every WAL file, needs that.

The module is imported only when its command runs (or for ``--help``), so its top
level may import what the command needs. Options several commands share live in
:mod:`mosaic.commands._options`; the ``repo`` tools are in :mod:`mosaic.commands.repo`.
"""
