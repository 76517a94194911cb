"""CS-Flow: fully convolutional cross-scale normalizing flow (Rudolph et al., WACV 2022)."""
