"""The backend-agnostic VLM pipeline over runners (see ``pipeline.py``) and artifact directories (``artifacts.py``)."""
