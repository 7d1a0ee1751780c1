"""DR-LoRA engine: per-expert LoRA with dynamic ranks for Mixture-of-Experts models.

Importing this package is cheap: torch and transformers load only when a module that needs them is imported.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
