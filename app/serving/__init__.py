"""How the service is served on the internet: HTTP protocol limits, the gunicorn worker,
and log lines without secrets."""
