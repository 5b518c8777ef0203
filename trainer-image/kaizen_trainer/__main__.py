"""``python -m kaizen_trainer --config FILE``: the trainer image's entry point."""

import sys

from kaizen_trainer.cli import main

sys.exit(main())
