"""Per-domain prediction: validated requests → features → model → response rows."""
