"""Training: data, objectives and the accelerate trainer (``diffusers-linearizer train``)."""
