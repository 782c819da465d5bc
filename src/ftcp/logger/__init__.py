"""ftcp.logger."""
