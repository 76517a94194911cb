"""PaDiM: per-position Gaussian of random-subset multi-layer features, Mahalanobis anomaly map."""
