"""``python -m anomalib_faprompt.inference MODEL --data ...``: see :mod:`anomalib_faprompt.inference.cli`."""

from anomalib_faprompt.inference.cli import main

main()
