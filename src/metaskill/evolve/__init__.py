"""evolve layer (see DESIGN.md)."""
