"""CFLOW-AD: conditional normalizing flows with positional encoding (Gudovskiy et al., WACV 2022)."""
