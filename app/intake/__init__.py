"""Taking a request body in: spool, relay, multipart parsing, leftovers, file names."""
