"""pipeline layer (see DESIGN.md)."""
