"""What a user runs: a search over their images, a whole benchmark study, the demo study."""
