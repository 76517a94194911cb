"""Feature extractors (AlexNet, ResNet-18 with optional SE/CBAM, Wide ResNets, EfficientNet-Lite0) and their registry.

``methods.backbones.registry`` names each backbone's layers, channels, strides, attention positions
and weight source; ``build_backbone(name, ...)`` builds one.
"""
