"""`python -m edgerep`: the same command line as the `edgerep` script."""
from edgerep.cli import main

main()
