"""ftcp.nsw."""
