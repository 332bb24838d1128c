"""methods layer (see DESIGN.md)."""
