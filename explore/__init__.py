"""``reweigh explore``: a run's whole loss history in the browser, from the data map to a curation rule."""
