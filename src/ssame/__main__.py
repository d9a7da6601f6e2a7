"""`python -m ssame` (used by `accelerate launch -m ssame train ...`)."""

import sys

from ssame.cli import main

sys.exit(main())
