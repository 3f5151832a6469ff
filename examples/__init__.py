"""Objective code for the example TuningStudies (importable as examples.<module>)."""
