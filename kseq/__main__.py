import sys

from kseq.cli import main

sys.exit(main(prog="python -m kseq"))
