"""ftcp.ssw."""
