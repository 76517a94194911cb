"""PatchCore (Roth et al., CVPR 2022): a nearest-neighbour patch memory bank on frozen ResNet-18 features."""
