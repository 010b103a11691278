"""Integration tests: anomalib's Engine and command line, subprocesses, exports, pipelines; all marked ``slow``."""
