"""The command line: ``lmlab <command> ...`` (``[project.scripts]``) and the thin
``src/<command>.py`` scripts run the same ``main(argv)`` of ``lmlab.cli.<command>``, and bad input
takes one path: ``error: <message>`` on one line and exit code 2 (``HYDRA_FULL_ERROR=1`` for the
traceback)."""
