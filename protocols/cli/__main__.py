"""``python -m protocols.cli``: the ``riff`` command line without the installed script."""

from protocols.cli.main import main

raise SystemExit(main())
