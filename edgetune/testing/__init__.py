"""Test helpers: tiny models built in code and fakes. Not part of the public API."""
