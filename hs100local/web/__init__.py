"""The web dashboard of `serve`."""
