"""Where the packaged pipelines live (no heavy imports, so that the command line starts fast)."""

import os

#: the trained Fashion-MNIST 32×32 pipeline shipped inside the package: what ``from_pretrained()`` and the
#: command line load when no model is named
DEFAULT_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default_model")


#: the class-conditional Fashion-MNIST 32×32 pipeline shipped inside the package (``class_labels``, guidance)
CLASSES_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion_mnist_classes")

#: the Fashion-MNIST 32×32 projection pipeline (``f ∘ f = f``; ``LinearizerProjectionPipeline``)
PROJECTION_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion_mnist_projection")

#: the 26-style modular style-transfer pipeline (``LinearizerStyleTransferPipeline``, any image size)
STYLES_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "styles")

#: name → folder of every packaged pipeline: ``LinearizerPipeline.from_pretrained(PACKAGED_MODELS[name])``
PACKAGED_MODELS = {"fashion-mnist": DEFAULT_MODEL_DIR, "fashion-mnist-classes": CLASSES_MODEL_DIR,
                   "fashion-mnist-projection": PROJECTION_MODEL_DIR, "styles": STYLES_MODEL_DIR}


def packaged_default_available() -> bool:
    """Whether the packaged default pipeline (its ``model_index.json``) is installed."""
    return os.path.isfile(os.path.join(DEFAULT_MODEL_DIR, "model_index.json"))
