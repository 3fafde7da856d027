"""``python -m hessid`` runs the ``hessid`` command line (:func:`hessid.cli.main`)."""

import sys

from hessid.cli import main

sys.exit(main())
