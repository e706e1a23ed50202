"""The processes of a node, one job each (``python -m tazcom.services.<name>``)."""
