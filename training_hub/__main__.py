"""`python -m training_hub ...` is the `training-hub` command."""

import sys

from training_hub.launch.cli import main

if __name__ == "__main__":
    sys.exit(main())
