"""DDM4IP step 2: learn an unknown forward operator by diffusion distribution matching."""
