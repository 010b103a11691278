"""Predict with an exported model: the ``anomalib-faprompt-predict`` command (OpenVINO, CPU).

:mod:`.exported_model` reads, checks and compiles the model; :mod:`.predict` runs it over image files and writes
what ``anomalib predict`` writes; :mod:`.cli` is the command line.
"""
