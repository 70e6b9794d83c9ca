import os
import sys

# Quiet TensorFlow's start-up banner for the command line; the user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kseq.cli import main  # noqa: E402 - after the environment is set

sys.exit(main())
