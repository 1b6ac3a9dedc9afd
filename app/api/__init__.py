"""The thin HTTP layer: auth, limits, parsing, and the one table that maps errors to statuses."""
