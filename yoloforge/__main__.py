"""``python -m yoloforge VERB ...`` (also the entry point for ``torchrun ... -m yoloforge train``)."""
import sys

from yoloforge.cli import main

sys.exit(main())
