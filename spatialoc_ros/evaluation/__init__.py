"""Evaluation: the papers' protocol, calibration, reports, pictures and speed (on top of the
core)."""
