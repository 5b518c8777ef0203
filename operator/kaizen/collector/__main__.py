"""``python -m kaizen.collector``: run the collector (same options as ``kaizen collector``)."""

import sys

from kaizen.cli.collector import main

sys.exit(main())
