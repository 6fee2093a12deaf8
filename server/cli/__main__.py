"""`python -m server.cli ...`: the same as the `orthofed` command."""

import sys

from server.cli.commands import main

sys.exit(main())
