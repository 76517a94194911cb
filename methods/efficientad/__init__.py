"""EfficientAD-S/M (Batzner et al., WACV 2024) with SE/CBAM in the student; reference or distilled teachers."""
