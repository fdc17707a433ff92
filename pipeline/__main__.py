"""`python -m pipeline`: run the pipeline, or an operator command (`python -m pipeline COMMAND --help`)."""

from __future__ import annotations

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
