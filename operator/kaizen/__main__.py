"""``python -m kaizen`` is the ``kaizen`` command."""

import sys

from kaizen.cli import main

sys.exit(main())
