"""``python -m anomalib_faprompt.report results.csv``: see :mod:`anomalib_faprompt.report.benchmark`."""

from anomalib_faprompt.report.benchmark import main

main()
