"""diffusers-linearizer: the Linearizer f(x) = g_y⁻¹(A g_x(x)) as a Hugging Face diffusers plugin."""

__version__ = "0.1.0"
