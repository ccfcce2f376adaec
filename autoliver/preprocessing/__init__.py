"""Preprocessing: raw cases → cropped, normalised, resampled, compressed training cases (and back)."""
