"""The registry's git hook scripts, shipped inside the package as ``wogit.hooks``."""
