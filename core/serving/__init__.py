"""Serving models: specs, the registry that loads and routes them, the handlers front ends call."""
