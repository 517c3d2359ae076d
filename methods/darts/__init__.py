"""DARTS-space versions of the search methods (the NB201 ones live in ``methods/``)."""
