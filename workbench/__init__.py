"""clip-workbench: research tools built on the clip package."""
