"""What many test modules share: running the `nurture` command (`cli`), and loopback ports (`ports`)."""
