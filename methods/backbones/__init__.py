"""Feature extractors: AlexNet and ResNet-18, each with optional SE/CBAM attention blocks."""
