"""`python -m demo`: serve the fvlm demo on http://127.0.0.1:7860 (see `python -m demo --help`)."""

import sys

from .app import main

sys.exit(main())
