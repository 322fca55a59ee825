"""nurture: campaigns-as-code B2B lead nurturing."""

__version__ = "0.1.0"
