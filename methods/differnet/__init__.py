"""DifferNet and AttentDifferNet: AlexNet (+SE/CBAM) features density-estimated by a normalizing flow."""
