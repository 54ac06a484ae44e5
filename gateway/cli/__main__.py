"""`python -m gateway.cli`: the `mcpgw` command."""

import sys

from gateway.cli import main

sys.exit(main())
