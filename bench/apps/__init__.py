"""Apps and helper processes the benchmark starts."""
