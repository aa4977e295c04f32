"""Export of a picked trial: which trial (`picks`), its files and re-scored numbers (`trial`), its model card."""
