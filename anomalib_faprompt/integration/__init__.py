"""How this package plugs into anomalib: its command line, its ``Engine`` and its outputs."""
