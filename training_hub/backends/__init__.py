"""Backends that execute training. Importing this package stays light; heavy imports happen at train time."""
