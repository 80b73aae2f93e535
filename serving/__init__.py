"""The BentoML service that serves the champion model."""
