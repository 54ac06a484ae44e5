"""What operators see of a running gateway: Prometheus metrics (`metrics.py`), the last hour of
each upstream's calls (`window.py`), the log's level and format and the line per call
(`logs.py`), and the access log (`access.py`)."""
