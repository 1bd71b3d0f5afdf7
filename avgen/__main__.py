"""`python -m avgen ...`: the `avgen` command without an installed entry point (e.g. from a source tree)."""
from avgen.cli import main

raise SystemExit(main())
