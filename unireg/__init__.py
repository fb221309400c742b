"""unireg: cohort-scale atlas registration with frozen pretrained features."""

__version__ = "0.1.0"
