"""Stage: score. Predictions for a table of configurations, any size, on Dask (see :mod:`.run`)."""
