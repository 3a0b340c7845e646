"""`python -m host_sync`: the same CLI as the `host-sync` console script."""
import sys

from host_sync.cli import main

sys.exit(main())
