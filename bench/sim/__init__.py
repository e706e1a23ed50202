"""The mesh simulator: real router cores on a virtual clock (``python -m bench.sim``)."""
