"""The embedded default: its offline tasks, its pre-trained experts, the EfficientNet-Lite
converter and the demo pool built from them."""
