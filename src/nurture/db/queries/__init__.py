"""Every SELECT, INSERT and UPDATE the flows run, named for what it returns or changes."""
