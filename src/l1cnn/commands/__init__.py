"""One module per newer subcommand: ``add(sub)`` builds its parser, its handler runs it.

cli.py lists these builders beside its own; a module here imports only ``l1cnn.cli_args`` and
light modules at the top, and the library inside its handler, so ``--help`` stays fast.
"""
