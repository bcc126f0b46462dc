"""Restoration algorithms that combine a forward operator with a flow prior."""
