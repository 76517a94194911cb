"""EfficientAD-S (Batzner et al., WACV 2024) with a ResNet-18-distilled teacher and SE/CBAM in the student."""
