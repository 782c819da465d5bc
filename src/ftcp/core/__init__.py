"""ftcp.core."""
