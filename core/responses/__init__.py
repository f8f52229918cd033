"""The Responses API: its handler, input items, output items and events, and the durable store."""
