"""What finished trials hold and how it is read: the `TrialRecord`, the front, tables, plots and the weights kept of
front trials. Reads records; runs nothing."""
