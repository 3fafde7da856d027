"""``python -m hessid.training.cli`` runs the ``hessid`` command line."""

import sys

from hessid.training.cli import main

sys.exit(main())
