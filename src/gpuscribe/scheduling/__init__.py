"""Pure scheduling cores: priority with aging, placement, one planning pass, retry timing."""
