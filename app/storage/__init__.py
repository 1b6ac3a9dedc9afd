"""Storage backends: where an uploaded file ends up, behind one small interface."""
