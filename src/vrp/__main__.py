"""`python -m vrp` runs the command line."""
import sys

from vrp.cli import main

sys.exit(main())
