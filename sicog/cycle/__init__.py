"""The SICOG self-improvement loop as resumable steps, with a report comparing its arms."""
