"""discnb: DISC (Latent Diffusion Models with Self-Distillation from Separated Conditions) as notebooks.

The logic lives here; the numbered notebooks in ``notebooks/`` call into it.
"""

import importlib

__version__ = "0.1.0"

# Label convention of the paper (Sec. 2.1): 0 = Non-Cancer, 1 = GG3, 2 = GG4, 3 = GG5.
LABELS = ("NC", "GG3", "GG4", "GG5")
K = len(LABELS)


def __getattr__(name):
    # discnb.DISCPipeline without making `import discnb` (LABELS, K) import torch and diffusers (PEP 562)
    if name == "DISCPipeline":
        return importlib.import_module("discnb.generative.disc_pipeline").DISCPipeline
    raise AttributeError(f"module 'discnb' has no attribute {name!r}")
