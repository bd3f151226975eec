"""Request/response schemas: one module per domain, plus the shapes every domain shares."""
