"""The validated recipe: the `StudyConfig`, its sections, and the copy frozen in the run directory."""
