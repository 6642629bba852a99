"""REST routes. Each route parses, calls one function, and shapes the response."""
