"""FastFlow: 2-D normalizing flows over (SE-/CBAM-)ResNet-18 feature stages (Yu et al. 2021)."""
