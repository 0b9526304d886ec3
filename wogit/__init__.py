"""wogit: a registry for maps, stored in a bare git repository."""

__version__ = "0.1.0"
