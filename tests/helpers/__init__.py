"""What the tests import: the tiny models, anomalib's Engine and command line, test data, the authors' files."""
