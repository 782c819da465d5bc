"""ftcp.lab."""
