"""The data ``python -m kseq demo`` trains on (``digits.npz``; ``DIGITS.md`` says where it comes from). No code."""
