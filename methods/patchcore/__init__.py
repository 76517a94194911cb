"""PatchCore (Roth et al., CVPR 2022): a nearest-neighbour patch memory bank on frozen WideResNet-50-2 (or ResNet-18) features."""
