"""The study's configuration: the typed params models (``params.py``) and the notebooks'
parameter cells kept in step with them (``notebooks.py``)."""
