"""AltCLIP multilingual demo (Hugging Face Space): zero-shot classification, search and caption ranking.

``altclip-push-space`` copies this file as the Space's ``app.py`` with ``MODEL`` set to the model it publishes;
``$ALTCLIP_MODEL`` overrides it when the Space runs.
"""

import os

from altclip.demo.app import build_demo
from altclip.demo.engine import DemoEngine

MODEL = "BAAI/AltCLIP"

demo = build_demo(DemoEngine(os.environ.get("ALTCLIP_MODEL", MODEL)))

if __name__ == "__main__":
    demo.launch()
