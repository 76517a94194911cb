"""RD++: Revisiting Reverse Distillation (multi-projection layer, OCBE, student decoder)."""
