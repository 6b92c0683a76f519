"""What a study file declares beyond its cells: published references, the protocol card, the selection rule."""
