"""SimpleNet (Liu et al., CVPR 2023) with an (SE-/CBAM-)ResNet-18 feature extractor."""
