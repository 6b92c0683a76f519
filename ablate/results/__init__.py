"""Where results live and how they are written: the folder layout, safe file writes, result rows and curves."""
