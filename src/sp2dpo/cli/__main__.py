"""``python -m sp2dpo.cli`` (e.g. ``accelerate launch -m sp2dpo.cli train STUDENT METHOD``)."""

import sys

from sp2dpo.cli import main

sys.exit(main())
