"""dq-ray: judge and curate LLM training data at web scale, as a Ray Data job."""

__version__ = "0.1.0"
