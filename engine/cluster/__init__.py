"""Ray cluster plumbing: connecting a driver (address, token auth) and classifying failures."""
