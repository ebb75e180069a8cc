"""Entry point of the web demo as a Hugging Face Space (gradio SDK), or locally: ``python app.py``.

It serves the package's demo (``diffusers_linearizer.demo``) with the packaged model, on gradio's default
address (a Space sets ``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT``; locally http://127.0.0.1:7860).
The checkout's own package is used when it is not installed; ``requirements.txt`` lists what to install.
``LINEARIZER_DEMO_MODEL`` may name another pipeline directory or Hub repo id.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from diffusers_linearizer.demo import launch  # noqa: E402

if __name__ == "__main__":
    launch(model=os.environ.get("LINEARIZER_DEMO_MODEL") or None)
