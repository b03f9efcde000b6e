"""Reports for people: `bootgen compare`, the timeline picture, and reading images (ls, diff)."""
