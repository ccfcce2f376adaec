"""Experiment planning: fingerprint + preset + memory budget → a typed, versioned plan."""
